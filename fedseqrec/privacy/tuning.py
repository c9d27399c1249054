"""The privacy of a hyper-parameter search over private runs (Papernot & Steinke, "Hyperparameter tuning with Rényi
differential privacy", ICLR 2022).

Each trial is a private run whose validation score is itself released with Gaussian noise; the search runs a random
number K of trials, K drawn once from a truncated negative binomial distribution TNB(η, γ) (η = 0: the logarithmic
distribution, η = 1: the geometric; η ≥ 0 here, as dp-accounting's RepeatAndSelectDpEvent, which the tests check
against), and releases the trial with the best noised score. If one trial is
(λ, ε(λ))-RDP at every order, the search is (λ, ε'(λ))-RDP with (their Theorem 2)

    ε'(λ) = ε(λ) + min over λ̂ ≥ 1 of [(1 + η)(1 − 1/λ̂) ε(λ̂) + (1 + η) log(1/γ) / λ̂] + log(E[K]) / (λ − 1).

A fixed number of trials would cost K times a run's ε; a random one costs a run's ε plus a few logarithmic terms.
Rényi orders and the conversion to (ε, δ) are Opacus' (those of every other ε fedseqrec prints).
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from fedseqrec.errors import UserError

Record = tuple[float, float, int]  # (noise multiplier, sample rate, steps): one ledger entry


def orders() -> tuple[float, ...]:
    """Opacus' Rényi orders (ascending): those of every RDP ε fedseqrec prints."""
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


def rdp_of(records: Iterable[Record], alphas: Sequence[float] | None = None) -> np.ndarray:
    """The RDP curve (one value per order) of composed Poisson-subsampled Gaussian releases."""
    from opacus.accountants.analysis import rdp as analysis

    alphas = list(alphas or orders())
    total = np.zeros(len(alphas))
    for noise, rate, steps in records:
        if steps > 0:
            total += np.asarray(analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=alphas))
    return total


def epsilon_of_rdp(rdp: np.ndarray, delta: float, alphas: Sequence[float] | None = None) -> float:
    """(ε at δ) of an RDP curve, by Opacus' conversion."""
    from opacus.accountants.analysis import rdp as analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = analysis.get_privacy_spent(orders=list(alphas or orders()), rdp=rdp, delta=delta)
    return float(eps)


def expected_trials(eta: float, gamma: float) -> float:
    """E[K] of the truncated negative binomial TNB(η, γ)."""
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma**eta))


def gamma_for(mean: float, eta: float) -> float:
    """The γ of TNB(η, γ) whose mean is ``mean`` (E[K] falls as γ grows: bisection)."""
    if mean <= 1:
        raise UserError(f"--trials {mean:g}: a private search needs a mean number of trials above 1")
    low, high = 1e-12, 1 - 1e-12
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_trials(eta, middle) > mean else (low, middle)
    return (low + high) / 2


def draw_trials(eta: float, gamma: float, rng: np.random.Generator | None = None) -> int:
    """One draw of K ~ TNB(η, γ) (K ≥ 1). ``rng``: a seeded one for tests; by default from the OS's entropy (the
    number of trials is part of the mechanism, and a known seed would make it public)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    if eta == 0:
        return int(rng.logseries(1 - gamma))
    while True:  # the negative binomial conditioned on K ≥ 1
        k = int(rng.negative_binomial(eta, gamma))
        if k >= 1:
            return k


def search_rdp(
    trial_rdp: Sequence[float], eta: float, gamma: float, alphas: Sequence[float] | None = None
) -> np.ndarray:
    """The RDP curve of the whole search (the formula above), at the same orders (ascending) as ``trial_rdp``."""
    alphas = np.asarray(alphas or orders())
    trial = np.asarray(trial_rdp, dtype=float)
    selection = np.min((1 + eta) * (1 - 1 / alphas) * trial + (1 + eta) * math.log(1 / gamma) / alphas)
    bound = trial + selection + math.log(expected_trials(eta, gamma)) / (alphas - 1)
    # RDP grows with the order: a higher order's bound holds at every lower one.
    return np.minimum.accumulate(bound[::-1])[::-1]


def score_record(noise_multiplier: float) -> Record:
    """The ledger entry of one noised validation score: the Gaussian mechanism on a sum to which each user adds
    at most 1 (their NDCG@10), with noise σ · 1 — no sampling, one step."""
    return (noise_multiplier, 1.0, 1)


def noised_mean(total: float, count: int, noise_multiplier: float, rng: np.random.Generator | None = None) -> float:
    """``total`` (a sum of per-user values in [0, 1]) plus N(0, σ²), divided by ``count``: the released score.
    ``count``, the number of users with a validation target, is treated as public (as the federation's user count
    is: the sampling rates are computed from it)."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return (total + float(rng.normal(0.0, noise_multiplier))) / max(1, count)
