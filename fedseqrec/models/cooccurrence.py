"""``cooc``: an item-to-item model counted, not trained — how often two items come close together in users'
histories — and the next items scored from a history's last items.

Each user contributes, for every two items at most ``window`` events apart in their training history, a weight
``decay ** (distance - 1)`` to the unordered pair (an item with itself counts nothing); the model is the sum of
those contributions, symmetric. A history is scored by its last ``HISTORY`` items, the most recent weighing most
(``RECENCY ** age``), plus a small popularity prior that orders the items no pair reaches. On Amazon Beauty this
counting gets most of what the trained sequence models get (benchmark notes), and because it is a sum of
per-user contributions it can be released once with the Gaussian mechanism (``privacy/cooccurrence.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedseqrec.models.base import SeqBatch

HISTORY = 5  # the last items of a history that score the next
RECENCY = 0.6  # each older item of those weighs this much less
PAIR_DECAY = 0.7  # a pair d events apart counts PAIR_DECAY ** (d - 1)


def user_pairs(history: np.ndarray, window: int, decay: float = PAIR_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """One user's contribution: the unordered pairs ``(i, j)``, i < j, of items at most ``window`` events apart in
    ``history``, as a (P, 2) array of distinct pairs and their summed weights. A 0 is an event left out: it keeps
    its place (the distances) and pairs with nothing."""
    items = np.asarray(history)
    firsts, seconds, weights = [], [], []
    for distance in range(1, min(window, len(items) - 1) + 1):
        a, b = items[:-distance], items[distance:]
        firsts.append(np.minimum(a, b))
        seconds.append(np.maximum(a, b))
        weights.append(np.full(len(a), decay ** (distance - 1)))
    if not firsts:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    pairs = np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1).astype(np.int64)
    weights = np.concatenate(weights)
    apart = (pairs[:, 0] != pairs[:, 1]) & (pairs[:, 0] > 0)
    distinct, inverse = np.unique(pairs[apart], axis=0, return_inverse=True)
    return distinct, np.bincount(inverse.reshape(-1), weights=weights[apart], minlength=len(distinct))


class ItemCooccurrence:
    """Scores over ``n_items`` from a symmetric pair matrix over the item ids ``rows`` (the others score only their
    prior)."""

    name = "cooc"

    def __init__(self, n_items: int, rows: np.ndarray, pairs: np.ndarray, prior: np.ndarray):
        if pairs.shape != (len(rows), len(rows)) or len(prior) != n_items + 1:
            raise ValueError(f"pairs {pairs.shape} for {len(rows)} rows, prior {len(prior)} for {n_items} items")
        self.n_items, self.rows = n_items, np.asarray(rows, dtype=np.int64)
        self.pairs = torch.from_numpy(np.asarray(pairs, dtype=np.float32))
        self.prior = torch.from_numpy(np.asarray(prior, dtype=np.float32))
        self.position = np.full(n_items + 1, -1, dtype=np.int64)  # item id → its row of ``pairs`` (-1: none)
        self.position[self.rows] = np.arange(len(self.rows))

    @classmethod
    def counted(cls, n_items: int, histories, window: int, prior: np.ndarray) -> ItemCooccurrence:
        """The plain model: every item a row, the pairs of ``histories`` summed as they are (not private)."""
        pairs = np.zeros((n_items + 1, n_items + 1), dtype=np.float32)
        for history in histories:
            index, weights = user_pairs(history, window)
            np.add.at(pairs, (index[:, 0], index[:, 1]), weights)
        return cls(n_items, np.arange(n_items + 1), pairs + pairs.T, prior)

    def eval(self) -> ItemCooccurrence:
        return self

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        items, lengths = batch.items.cpu().numpy(), batch.lengths.cpu().numpy()
        weights = torch.zeros(len(items), len(self.rows))
        for b, length in enumerate(lengths):
            last = self.position[items[b, max(0, length - HISTORY) : length]]
            ages = np.arange(len(last) - 1, -1, -1)
            known = last >= 0
            weights[b].index_put_(
                (torch.from_numpy(last[known]),), torch.from_numpy(RECENCY ** ages[known]).float(), accumulate=True
            )
        scores = self.prior.unsqueeze(0).repeat(len(items), 1)
        scores[:, torch.from_numpy(self.rows)] += weights @ self.pairs
        scores[:, 0] = -math.inf
        return scores
