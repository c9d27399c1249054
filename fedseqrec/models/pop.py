"""``pop``: recommend the items most often seen in training, the same list for everyone."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedseqrec.models.base import SeqBatch


class Popularity:
    name = "pop"

    def __init__(self, n_items: int):
        self.counts = torch.zeros(n_items + 1)

    def fit(self, item_ids: np.ndarray) -> Popularity:
        counts = np.bincount(item_ids, minlength=len(self.counts)).astype(np.float32)
        self.counts = torch.from_numpy(counts)
        return self

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        scores = self.counts.unsqueeze(0).repeat(batch.items.shape[0], 1)
        scores[:, 0] = -math.inf
        return scores
