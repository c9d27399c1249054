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
import warnings

import numpy as np
import torch
from scipy import sparse
from torch import nn

from fedseqrec.models.base import SeqBatch
from fedseqrec.models.config import ModelConfig

HISTORY = 5  # the last items of a history that score the next
RECENCY = 0.6  # each older item of those weighs this much less
PAIR_DECAY = 0.7  # a pair d events apart counts PAIR_DECAY ** (d - 1)
DENSE_ROWS = 4096  # above this many rows a sparse table is scored sparse (Beauty's 12,101² dense: 586 MB)


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


def pair_table(histories, window: int, size: int) -> sparse.csr_matrix:
    """The pairs of ``histories`` summed as they are, as the upper triangle of a (size, size) sparse matrix over
    item ids, indices sorted (so its coordinates are in ascending order of ``first · size + second``)."""
    firsts, seconds, weights = [], [], []
    for history in histories:
        index, weight = user_pairs(history, window)
        firsts.append(index[:, 0])
        seconds.append(index[:, 1])
        weights.append(weight)
    table = sparse.coo_matrix(
        (np.concatenate([*weights, [0.0]]), (np.concatenate([*firsts, [0]]), np.concatenate([*seconds, [0]]))),
        shape=(size, size),
    ).tocsr()  # duplicates summed
    table.eliminate_zeros()
    table.sort_indices()
    return table


class ItemCooccurrence(nn.Module):
    """Scores over ``cfg.n_items`` items from a symmetric pair matrix over the item ids ``rows`` (the others score
    only their prior). Its state is the matrix's upper triangle as coordinates and values (``first``, ``second``:
    positions in ``rows``; ``value``), so a run folder keeps a sparse count table small; the scoring table is built
    once, on the buffers' device, when it first scores."""

    name = "cooc"
    reads_queries = False
    revision = 1
    revision_note = ""

    def __init__(self, cfg: ModelConfig, rows, first, second, value, prior):
        super().__init__()
        self.cfg = cfg
        # copies (torch.tensor): a view would save its whole base array; positions fit int32 (half the bytes)
        self.register_buffer("rows", torch.tensor(np.asarray(rows), dtype=torch.int64))
        self.register_buffer("first", torch.tensor(np.asarray(first), dtype=torch.int32))
        self.register_buffer("second", torch.tensor(np.asarray(second), dtype=torch.int32))
        self.register_buffer("value", torch.tensor(np.asarray(value), dtype=torch.float32))
        self.register_buffer("prior", torch.tensor(np.asarray(prior), dtype=torch.float32))
        self._pairs: torch.Tensor | None = None
        self._position: np.ndarray | None = None

    @classmethod
    def from_matrix(cls, cfg: ModelConfig, rows: np.ndarray, pairs: np.ndarray, prior: np.ndarray) -> ItemCooccurrence:
        """The model of a symmetric (K, K) ``pairs`` over ``rows`` (its diagonal is not read)."""
        if pairs.shape != (len(rows), len(rows)) or len(prior) != cfg.n_items + 1:
            raise ValueError(f"pairs {pairs.shape} for {len(rows)} rows, prior {len(prior)} for {cfg.n_items} items")
        first, second = np.nonzero(np.triu(pairs, k=1))
        return cls(cfg, rows, first, second, pairs[first, second], prior)

    @classmethod
    def from_state(cls, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> ItemCooccurrence:
        """An empty model of the state's shapes (``load_state_dict`` then fills it)."""
        shaped = {key: torch.zeros_like(state[key]) for key in ("rows", "first", "second", "value", "prior")}
        return cls(cfg, **{key: value.numpy() for key, value in shaped.items()})

    @classmethod
    def from_pairs(cls, cfg: ModelConfig, first, second, value, prior: np.ndarray) -> ItemCooccurrence:
        """The model whose rows are every item id, with the pairs ``(first[p], second[p])`` (item ids, each pair
        once) worth ``value[p]``: a sparse table."""
        return cls(cfg, np.arange(cfg.n_items + 1), first, second, value, prior)

    @classmethod
    def counted(cls, cfg: ModelConfig, histories, window: int, prior: np.ndarray) -> ItemCooccurrence:
        """The plain model: every item a row, the pairs of ``histories`` summed as they are (not private), kept
        sparse (a catalogue of 100k items has 10¹⁰ pairs, few of them seen)."""
        table = pair_table(histories, window, cfg.n_items + 1).tocoo()
        return cls.from_pairs(cfg, table.row, table.col, table.data, prior)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._pairs = self._position = None  # new counts: the dense matrix is built again
        super()._load_from_state_dict(*args, **kwargs)

    def dense(self) -> tuple[torch.Tensor, np.ndarray]:
        """The symmetric (K, K) matrix — sparse (CSR) when few of its pairs are set and K is large — and each item
        id's row in it (-1: none)."""
        if self._pairs is None:
            size = len(self.rows)
            first, second = self.first.long(), self.second.long()
            if size > DENSE_ROWS and len(self.value) < size * size // 8:
                both = torch.stack([torch.cat([first, second]), torch.cat([second, first])])
                pairs = torch.sparse_coo_tensor(
                    both, torch.cat([self.value, self.value]), (size, size), check_invariants=False
                )
                with warnings.catch_warnings():  # "sparse CSR support is in beta": said to every user, every time
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    pairs = pairs.coalesce().to_sparse_csr()
            else:
                pairs = torch.zeros(size, size, device=self.value.device)
                pairs[first, second] = self.value
                pairs[second, first] = self.value
            position = np.full(self.cfg.n_items + 1, -1, dtype=np.int64)
            position[self.rows.cpu().numpy()] = np.arange(size)
            self._pairs, self._position = pairs, position
        return self._pairs, self._position

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        pairs, position = self.dense()
        items, lengths = batch.items.cpu().numpy(), batch.lengths.cpu().numpy()
        weights = np.zeros((len(items), len(self.rows)), dtype=np.float32)  # built on the CPU, sent once
        for b, length in enumerate(lengths):
            last = position[items[b, max(0, length - HISTORY) : length]]
            ages = np.arange(len(last) - 1, -1, -1)
            known = last >= 0
            np.add.at(weights[b], last[known], RECENCY ** ages[known])
        weights = torch.from_numpy(weights).to(self.value.device)
        scores = self.prior.unsqueeze(0).repeat(len(items), 1)
        # pairs is symmetric: (P Wᵀ)ᵀ = W P, and a sparse P multiplies from the left
        scores[:, self.rows] += (pairs @ weights.T).T if pairs.layout == torch.sparse_csr else weights @ pairs
        scores[:, 0] = -math.inf
        return scores
