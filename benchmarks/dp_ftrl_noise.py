"""Would DP-FTRL's correlated noise (tree aggregation, Kairouz et al. 2021) beat the user-level DP-SGD of
benchmarks/privacy_curve.py at the same ε? A comparison of the noise each puts on what the model is built from.

    python benchmarks/dp_ftrl_noise.py

FTRL builds the model at round t from the running sum of the rounds' clipped gradient sums; DP-FTRL releases every
running sum through a binary tree of noisy partial sums, so the running sum at t carries the noise of the few tree
nodes that add up to it, not of t independent draws. It needs no sampling: each user is in one round of each pass
over the users (an "epoch"), the tree restarted every epoch, accounted by dp-accounting's
``SingleEpochTreeAggregationDpEvent`` self-composed once per tree (its RDP accountant; the replace-with-zero
neighbouring relation it requires is add/remove when a round's number of users is public). DP-SGD, as run here,
samples each user with rate q every round (Poisson) and noises each round once: the amplification by sampling
is in its σ (our RDP accountant, Opacus').

For each setting of the privacy curves (same users per round, same rounds, same ε and δ) this prints and writes
both noise multipliers and the standard deviation, in units of the clipping norm C, of the noise on the running sum
after the last round and its mean over the rounds (DP-SGD: σ√t; tree: σ√(nodes adding up to it), and with every
node's information used, Honaker's estimator — the tree at its best), and on one round's step (DP-SGD: σ; tree: the
difference of two running sums). Both add up the same expected number of clipped users a round, so the lower
noise is the better mechanism. Writes benchmarks/results/dp_ftrl_noise.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from fedseqrec.privacy.accounting import calibrate_noise

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# (dataset, users, users a round, rounds, δ): the user-level DP-SGD recipes of benchmarks/privacy_curve.py
SETTINGS = (("beauty", 22_363, 2_000, 60, 0.1 / 22_363), ("ml-100k", 943, 300, 150, 1e-5))
EPSILONS = (1.0, 8.0)


def tree_epsilon(sigma: float, rounds_per_tree: int, trees: int, delta: float) -> float:
    """ε of ``trees`` trees of ``rounds_per_tree`` leaves, noise multiplier ``sigma`` on every node, each user in one
    leaf of each tree (dp-accounting, RDP)."""
    accountant = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=rdp_privacy_accountant.NeighborRel.REPLACE_SPECIAL
    )
    tree = dp_event.SingleEpochTreeAggregationDpEvent(sigma, rounds_per_tree)
    accountant.compose(dp_event.SelfComposedDpEvent(tree, trees))
    return accountant.get_epsilon(delta)


def smallest_sigma(epsilon_of, target: float) -> float:
    """The smallest noise multiplier whose ε is at most ``target`` (ε falls as σ grows), to 0.1 %."""
    low, high = 0.05, 1_000.0
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if epsilon_of(middle) > target else (low, middle)
    return high


def prefix_variances(leaves: int) -> np.ndarray:
    """For t = 1 … ``leaves``: the variance, in units of σ², of the best linear unbiased estimate (Honaker's) of the
    sum of a tree's first t leaves from the nodes complete by then (every dyadic interval of leaves inside the first
    t), each node noised independently."""
    variances = []
    for t in range(1, leaves + 1):
        nodes = [
            (start, start + size)
            for size in (2**level for level in range(int(math.log2(leaves)) + 1))
            for start in range(0, t - size + 1, size)
        ]
        design = np.zeros((len(nodes), t))
        for row, (start, end) in enumerate(nodes):
            design[row, start:end] = 1.0
        ones = np.ones(t)
        variances.append(float(ones @ np.linalg.solve(design.T @ design, ones)))
    return np.asarray(variances)


def running_sum_noise(rounds: int, rounds_per_tree: int) -> tuple[float, float]:
    """The noise on the running sum, in units of σ, with the tree restarted every ``rounds_per_tree`` rounds: after
    the last round, and its mean over the rounds (the model is built from the running sum at every round)."""
    within = prefix_variances(rounds_per_tree)
    variances = [
        (r // rounds_per_tree) * within[-1] + (within[r % rounds_per_tree - 1] if r % rounds_per_tree else 0.0)
        for r in range(1, rounds + 1)
    ]
    return math.sqrt(variances[-1]), float(np.mean(np.sqrt(variances)))


def compare(dataset: str, users: int, per_round: int, rounds: int, delta: float, epsilon: float) -> dict:
    rate = per_round / users
    sgd = calibrate_noise(epsilon, delta, rate, rounds, "rdp")
    rounds_per_tree = users // per_round  # an epoch: every user in one round
    trees = math.ceil(rounds / rounds_per_tree)
    tree = smallest_sigma(lambda s: tree_epsilon(s, rounds_per_tree, trees, delta), epsilon)
    done, into = divmod(rounds, rounds_per_tree)
    # the nodes that add up to the running sum: each completed tree's total and the current tree's prefix
    nodes = done * bin(rounds_per_tree).count("1") + bin(into).count("1")
    last, mean = running_sum_noise(rounds, rounds_per_tree)
    sgd_mean = float(np.mean(np.sqrt(np.arange(1, rounds + 1))))
    return {
        "dataset": dataset,
        "epsilon": epsilon,
        "delta": delta,
        "rounds": rounds,
        "users_a_round": per_round,
        "dp_sgd": {
            "sampling_rate": round(rate, 4),
            "noise_multiplier": round(sgd, 4),
            "running_sum_noise_over_C": round(sgd * math.sqrt(rounds), 3),
            "running_sum_noise_over_C_mean_over_rounds": round(sgd * sgd_mean, 3),
            "a_round_noise_over_C": round(sgd, 3),
        },
        "dp_ftrl_tree": {
            "rounds_per_tree": rounds_per_tree,
            "trees": trees,
            "noise_multiplier": round(tree, 4),
            "epsilon_dp_accounting": round(tree_epsilon(tree, rounds_per_tree, trees, delta), 4),
            "running_sum_noise_over_C": round(tree * math.sqrt(nodes), 3),
            "nodes_in_the_last_running_sum": nodes,
            # every node's information used (Honaker's estimator): the tree at its best
            "running_sum_noise_over_C_best_estimate": round(tree * last, 3),
            "running_sum_noise_over_C_best_estimate_mean_over_rounds": round(tree * mean, 3),
            # a step is the difference of two running sums: at least two nodes apart, about 2·log2(leaves) deep
            "a_round_noise_over_C": round(tree * math.sqrt(2 * max(1.0, math.log2(rounds_per_tree))), 3),
        },
    }


def main() -> None:
    rows = [compare(*setting, epsilon) for setting in SETTINGS for epsilon in EPSILONS]
    for row in rows:
        sgd, tree = row["dp_sgd"], row["dp_ftrl_tree"]
        sgd_noise = f"{sgd['running_sum_noise_over_C']:.2f} C ({sgd['running_sum_noise_over_C_mean_over_rounds']:.2f})"
        best = tree["running_sum_noise_over_C_best_estimate"]
        best_mean = tree["running_sum_noise_over_C_best_estimate_mean_over_rounds"]
        print(
            f"{row['dataset']:8} ε = {row['epsilon']:g}, noise on the running sum after the last round (its mean over "
            f"rounds): DP-SGD {sgd_noise}, σ {sgd['noise_multiplier']:.3f} at q {sgd['sampling_rate']}; DP-FTRL "
            f"{tree['running_sum_noise_over_C']:.2f} C, Honaker's estimate {best:.2f} C ({best_mean:.2f}), σ "
            f"{tree['noise_multiplier']:.3f}, {tree['trees']} trees of {tree['rounds_per_tree']} rounds"
        )
    out = RESULTS / "dp_ftrl_noise.json"
    out.write_text(json.dumps({"command": "python benchmarks/dp_ftrl_noise.py", "rows": rows}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
