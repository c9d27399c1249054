"""The private popularity baseline: item counts released once with the Gaussian mechanism, user-level.

Each user counts once for each of at most ``items_per_user`` distinct items of their training history (the most
recent ones), so adding or removing one user changes the count vector by at most √items_per_user in ℓ2 norm; the
counts get Gaussian noise of standard deviation z·√items_per_user, with z calibrated for (ε, δ) — one release of
the Gaussian mechanism (sampling rate 1, one step), accounted like every other mechanism here. Counts add up over
silos, so a federation releases the same thing (the noise once, on the total). It is the floor a private model
must beat, and what to recommend below the ε where none does.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.models.pop import Popularity
from fedseqrec.privacy.accounting import calibrate_noise, epsilon

MECHANISM = (
    "private popularity: each user counts once for each of at most items-per-user distinct items of their training "
    "history, Gaussian noise of z·√items-per-user on every item count, released once"
)


def user_item_counts(data: SequenceData, split: Split, items_per_user: int) -> np.ndarray:
    """Per item: how many users have it among the ``items_per_user`` most recent distinct items of their training
    history."""
    counts = np.zeros(data.n_items + 1, dtype=np.float64)
    for user in range(1, data.n_users + 1):
        history = data.sequence(user)[: split.train_end[user]][::-1]
        distinct = history[np.sort(np.unique(history, return_index=True)[1])][:items_per_user]
        counts[distinct] += 1.0
    counts[0] = 0.0
    return counts


def private_popularity(
    data: SequenceData, split: Split, target_epsilon: float, delta: float, items_per_user: int, accountant: str = "rdp"
) -> tuple[Popularity, dict]:
    """The noisy-count popularity model and its privacy record (noise multiplier, ε re-computed, δ)."""
    z = calibrate_noise(target_epsilon, delta, 1.0, 1, accountant)
    counts = user_item_counts(data, split, items_per_user)
    generator = torch.Generator().manual_seed(secrets.randbits(63))  # the noise must not follow from --seed
    noise = torch.normal(0.0, z * items_per_user**0.5, (len(counts),), generator=generator).numpy()
    model = Popularity(data.n_items)
    model.counts = torch.from_numpy((counts + noise).astype(np.float32))
    record = {
        "mechanism": MECHANISM,
        "privacy_unit": "user-level: adding or removing one user with all of their events",
        "noise_multiplier": z,
        "items_per_user": items_per_user,
        "sensitivity_l2": items_per_user**0.5,
        "delta": delta,
        "accountant": accountant,
        "ledger": [{"round": 1, "noise_multiplier": z, "sample_rate": 1.0, "steps": 1}],
        "max_epsilon": epsilon([(z, 1.0, 1)], delta, accountant),
    }
    return model, record
