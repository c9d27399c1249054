"""Which item rows a private run trains: the K items most users hold, chosen from item counts released once with
the Gaussian mechanism, in the spirit of DP-FEST (Ghazi et al., "Sparsity-preserving differentially private
training of large embedding models", NeurIPS 2023).

Most of a sequence recommender's parameters are item rows (on Amazon Beauty 12,101 × 64 of SASRec's 0.9 M), and each
user touches few of them; a user-level mechanism that noises every row drowns the rows of rare items, whose signal
is a handful of users, and spends its noise on coordinates nobody moved. Here

1. each private user contributes the indicator vector of the distinct items of their training history, scaled to
   unit ℓ2 norm (a user with n items counts 1/√n for each): adding or removing one user moves the sum by at most 1;
2. the sum gets Gaussian noise of standard deviation z (``--selection-noise``) once, before the first round: one
   Gaussian mechanism (sampling rate 1, one step), composed into the run's ledger as its first record;
3. the K rows with the largest noisy counts (``--item-rows``) are the only item rows the rounds train: every other
   row of the item table (and of an untied scorer) is left out of each user's contribution before clipping, gets
   no noise, and keeps its initial weights. Choosing the top K of a released vector is post-processing: it costs
   nothing more.

Fewer noised coordinates means less noise in the whole update for the same σ, and the clipping norm C is spent on
rows that can learn.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split

SENSITIVITY = 1.0  # ℓ2: one user's unit-norm indicator vector


def item_counts(data: SequenceData, split: Split, users: np.ndarray) -> np.ndarray:
    """Σ over ``users`` of the unit-norm indicator vector of each one's distinct training items (index: item id;
    0, the padding, is 0)."""
    counts = np.zeros(data.n_items + 1, dtype=np.float64)
    for user in users:
        history = data.sequence(int(user))[: split.train_end[int(user)]]
        distinct = np.unique(history[history > 0])
        if len(distinct):
            counts[distinct] += 1.0 / np.sqrt(len(distinct))
    return counts


@dataclass(frozen=True)
class ItemSelection:
    rows: np.ndarray  # the chosen item ids, ascending
    noise_multiplier: float  # z: the counts' noise is z × SENSITIVITY

    def record(self) -> dict:
        """The ledger record of the release (round 0: before the first round)."""
        return {"round": 0, "noise_multiplier": self.noise_multiplier, "sample_rate": 1.0, "steps": 1}

    def mask(self, rows: int) -> torch.Tensor:
        """1.0 for the chosen rows of a table of ``rows`` rows, 0.0 elsewhere."""
        return row_mask(self.rows, rows)


def select_items(counts: np.ndarray, k: int, noise_multiplier: float, rng: np.random.Generator | None = None):
    """The ``k`` items with the largest counts after Gaussian noise of z × sensitivity (OS randomness: a noise
    predictable from --seed would be no noise)."""
    noisy = released_counts(counts, noise_multiplier, rng)
    return ItemSelection(top_items(noisy, k), float(noise_multiplier))


def released_counts(counts: np.ndarray, noise_multiplier: float, rng: np.random.Generator | None = None):
    """The counts with Gaussian noise of z × sensitivity: the release itself (the padding entry is -inf)."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))
    noisy = counts + rng.normal(0.0, noise_multiplier * SENSITIVITY, counts.shape)
    noisy[0] = -np.inf  # the padding row is never an item
    return noisy


def top_items(noisy: np.ndarray, k: int) -> np.ndarray:
    """The ids of the ``k`` largest released counts, ascending (post-processing of the release)."""
    k = min(k, len(noisy) - 1)
    return np.sort(np.argpartition(-noisy, k - 1)[:k]).astype(np.int64)


def row_mask(rows, size: int) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[torch.as_tensor(np.asarray(rows, dtype=np.int64))] = 1.0
    return mask
