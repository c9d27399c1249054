"""An empirical lower bound on ε from one training run: the statistics of Steinke, Nasr and Jagielski, "Privacy
Auditing with One (1) Training Run" (NeurIPS 2023).

m canaries are each included in the training data independently with probability ½. After training, an auditor
guesses, from a membership score per canary, "in" for some, "out" for others and abstains on the rest: r guesses,
v of them right. If training is (ε, δ)-DP, the number of right guesses is stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 3.1 / Proposition 5.7), so

    P[W ≥ v] ≤ P[Bin(r, q) ≥ v] + 2mδ · max_{i=1..v} P[v > Bin(r, q) ≥ v − i] / i,   q = e^ε / (1 + e^ε),

and every ε whose p-value is below 1 − confidence is rejected: the lower bound is the largest such ε. The guesses
come from the scores' top and bottom k (a grid of k, the confidence split over the grid by Bonferroni, so choosing
the best k after the fact costs nothing in validity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of ``v`` or more right guesses out of ``r`` (of ``m`` canaries) under (ε, δ)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return min(1.0, tail)
    below = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, q))  # P[v > Bin >= v - i], i = 1..v
    worst = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * worst)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float = 0.05) -> float:
    """The largest ε the outcome (v right of r guesses) rejects at ``significance``: with confidence 1 −
    significance, training is not (ε', δ)-DP for any ε' below it. 0 when nothing is rejected."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance and high < 1e3:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < significance:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class AuditResult:
    epsilon_lower_bound: float
    confidence: float
    canaries: int
    guesses: int  # r
    correct: int  # v
    guessed_in: int  # k+ of the best (k+, k−)
    guessed_out: int  # k−
    choices: int  # (k+, k−) pairs tried; the confidence is split over them

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def guess_grid(m: int) -> list[tuple[int, int]]:
    """(k+, k−): guess "in" for the k+ highest scores and "out" for the k− lowest — a few shares of m, one-sided
    ("in" only) and two-sided."""
    shares = sorted({max(1, round(m * s)) for s in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)})
    return [(k, 0) for k in shares] + [(k, k) for k in shares]


def audit(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95) -> AuditResult:
    """The lower bound from membership ``scores`` (higher: more likely trained on) and the true coins."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or len(included) != m:
        raise ValueError(f"need one coin per score, got {len(included)} coins for {m} scores")
    order = np.argsort(-scores, kind="stable")  # highest first; ties keep the canaries' order
    grid = guess_grid(m)
    significance = (1 - confidence) / len(grid)
    best = AuditResult(0.0, confidence, m, 0, 0, 0, 0, len(grid))
    for k_in, k_out in grid:
        if k_in + k_out > m:
            continue
        right = int(included[order[:k_in]].sum()) + (int((~included[order[m - k_out :]]).sum()) if k_out else 0)
        bound = epsilon_lower_bound(m, k_in + k_out, right, delta, significance)
        if bound > best.epsilon_lower_bound or best.guesses == 0:
            best = AuditResult(bound, confidence, m, k_in + k_out, right, k_in, k_out, len(grid))
    return best
