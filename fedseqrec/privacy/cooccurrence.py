"""The private co-occurrence model: item pairs counted from users' histories and released once with the Gaussian
mechanism, user-level.

1. The K items most users hold are chosen from item counts released with noise z = ``--cooc-item-noise`` / ε
   (``item_selection``, the release ``--item-rows`` uses): the ledger's first record. The top K of a released
   vector is post-processing. A smaller z chooses the items and orders the popularity prior better and leaves
   more noise for the pairs.
2. Each user's pairs between chosen items (``models.cooccurrence.user_pairs``) form a vector over the K(K − 1) / 2
   unordered pairs, scaled to ℓ2 norm at most 1: adding or removing one user moves the sum by at most 1.
3. The sum gets Gaussian noise of standard deviation σ on every pair of chosen items, once — σ the smallest that
   keeps the two releases composed within the target ε: the ledger's second record (sampling rate 1, one step).

The noisy counts of step 1 are the model's popularity prior, so the model is post-processing of the two releases
alone. The sum is a sum over users, so a federation's silos can each add up their own users' clipped vectors and
the server noise the total once: the same release, whoever adds it up (the trust model of ``--privacy
user-level``: the server sees the silos' sums before the noise).
"""

from __future__ import annotations

import secrets

import numpy as np

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.cooccurrence import ItemCooccurrence, user_pairs
from fedseqrec.privacy.accounting import calibrate_noise_after, epsilon
from fedseqrec.privacy.item_selection import item_counts, released_counts, top_items

MECHANISM = (
    "private co-occurrence: item counts released with Gaussian noise choose K items; each user's pairs of chosen "
    "items within --cooc-window events, as one vector scaled to ℓ2 norm ≤ 1, summed over users; Gaussian noise σ on "
    "every pair, released once"
)
PRIOR_WEIGHT = 2.0  # the popularity prior's largest value, in units of σ: below a pair seen by a few users
MOST_ITEMS = 10_000  # every pair of chosen items is noised: 5·10⁷ pairs, a few dense K² arrays of 0.8 GB


def clipped_pair_sum(
    data: SequenceData, split: Split, users, chosen: np.ndarray, window: int
) -> tuple[np.ndarray, float]:
    """Σ over ``users`` of their pair vectors over the ``chosen`` items, each scaled to ℓ2 norm ≤ 1, as an upper
    triangular (K, K) matrix in ``chosen``'s order; and the largest norm before scaling."""
    position = np.full(data.n_items + 1, -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    total, largest = np.zeros((len(chosen), len(chosen))), 0.0
    for user in users:
        history = data.sequence(int(user))[: split.train_end[int(user)]]
        kept = position[history[history > 0]]
        pairs, weights = user_pairs(np.where(kept >= 0, kept + 1, 0), window)  # row + 1: 0 stays the gap
        if not len(weights):
            continue
        norm = float(np.sqrt((weights**2).sum()))
        largest = max(largest, norm)
        np.add.at(total, (pairs[:, 0] - 1, pairs[:, 1] - 1), weights / max(norm, 1.0))
    return total, largest


def private_cooccurrence(
    data: SequenceData,
    split: Split,
    target_epsilon: float,
    delta: float,
    items: int,
    window: int,
    cfg: ModelConfig,
    item_noise_times_epsilon: float = 10.0,
    accountant: str = "rdp",
    rng: np.random.Generator | None = None,
) -> tuple[ItemCooccurrence, dict]:
    """The released model and its privacy record (the two releases' ledger, ε re-computed from it, δ)."""
    if items > MOST_ITEMS:
        raise UserError(
            f"--cooc-items {items}: the release noises every pair of the chosen items ({items * (items - 1) // 2:,} "
            f"pairs); choose at most {MOST_ITEMS:,}"
        )
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))  # noise must not follow --seed
    users = np.arange(1, data.n_users + 1)
    selection_noise = item_noise_times_epsilon / target_epsilon
    counts = item_counts(data, split, users)
    noisy_counts = released_counts(counts, selection_noise, rng)  # step 1's release: the choice and the prior
    chosen = top_items(noisy_counts, items)
    prior_record = (selection_noise, 1.0, 1)
    sigma = calibrate_noise_after((prior_record,), target_epsilon, delta, 1.0, 1, accountant)
    total, _ = clipped_pair_sum(data, split, users, chosen, window)
    upper = np.triu(total + rng.normal(0.0, sigma, total.shape), k=1)
    released = upper + upper.T
    prior = np.zeros(data.n_items + 1)
    prior[chosen] = PRIOR_WEIGHT * sigma * np.clip(noisy_counts[chosen], 0.0, None)
    prior /= max(float(noisy_counts[chosen].max()), 1e-12)
    model = ItemCooccurrence.from_matrix(cfg, chosen, released, prior)
    ledger = [
        {"round": 0, "noise_multiplier": selection_noise, "sample_rate": 1.0, "steps": 1},
        {"round": 1, "noise_multiplier": sigma, "sample_rate": 1.0, "steps": 1},
    ]
    record = {
        "mechanism": MECHANISM,
        "privacy_unit": "user-level: adding or removing one user with all of their events",
        "item_selection": {"count": len(chosen), "noise_multiplier": selection_noise},
        "window": window,
        "noise_multiplier": sigma,
        "sensitivity_l2": 1.0,
        "delta": delta,
        "accountant": accountant,
        "ledger": ledger,
        "max_epsilon": epsilon([(r["noise_multiplier"], 1.0, 1) for r in ledger], delta, accountant),
    }
    return model, record
