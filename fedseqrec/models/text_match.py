"""``text-match``: rank items by the words they share with the search query, ties broken by popularity.

The baseline of ``--task search`` that uses the query alone: no history, no learning — each item scores the
number of distinct query words found in its text (its string features: the shop's category and price band, a
title), plus its share of training events (below 1) so that among equal matches the popular item comes first.
Without a query it is the popularity baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedseqrec.models.base import SeqBatch


class TextMatch:
    name = "text-match"

    def __init__(self, item_words: np.ndarray, item_ids: np.ndarray):
        """``item_words``: token ids by item id (data/text.py); ``item_ids``: every training event's item."""
        self.item_words = torch.from_numpy(item_words)
        counts = np.bincount(item_ids, minlength=len(item_words)).astype(np.float64)
        self.popularity = torch.from_numpy(counts / (counts.max() + 1.0)).float()

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        rows = torch.arange(batch.items.shape[0])
        scores = self.popularity.unsqueeze(0).repeat(len(rows), 1)
        if batch.target_queries is not None:
            query = batch.target_queries[rows, batch.lengths - 1]  # (B, L): the target's query
            for column in range(query.shape[1]):
                word = query[:, column : column + 1]  # (B, 1)
                repeated = (query[:, :column] == word).any(dim=1, keepdim=True)  # count each distinct word once
                found = (self.item_words.unsqueeze(0) == word.unsqueeze(-1)).any(-1)  # (B, items)
                scores += (found & (word > 0) & ~repeated).float()
        scores[:, 0] = -math.inf
        return scores
