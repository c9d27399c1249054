"""Contiguous ids and per-user chronological sequences.

Ids are contiguous from 1 for users, items, event types and search queries; 0 is reserved for padding
(and for "no query"). The vocabulary keeps the original token of every id so that ids map back.
Sequences are stored flat: user ``u`` owns ``items[offsets[u]:offsets[u + 1]]`` (user 0 is the empty
padding user), the layout models batch from and the prepared format saves as-is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import AD_CLICK, AD_CONVERSION, AD_EVENTS, EVENT, ITEM, QUERY, TIMESTAMP, USER
from fedseqrec.data.text import TokenTables, token_tables

PAD = "[PAD]"


@dataclass
class Vocabulary:
    """Original tokens by id; index 0 holds the padding token."""

    users: np.ndarray
    items: np.ndarray
    events: np.ndarray
    queries: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.users) - 1

    @property
    def n_items(self) -> int:
        return len(self.items) - 1


@dataclass
class SequenceData:
    vocab: Vocabulary
    offsets: np.ndarray  # int64, length n_users + 2, offsets[0] == offsets[1] == 0
    items: np.ndarray  # int32 item ids
    events: np.ndarray  # int16 event-type ids
    timestamps: np.ndarray  # float64 epoch seconds
    queries: np.ndarray  # int32 query ids, 0 = none
    user_features: pd.DataFrame  # index: user id 1..n_users, string columns (may have none)
    item_features: pd.DataFrame  # index: item id 1..n_items

    @property
    def n_users(self) -> int:
        return self.vocab.n_users

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length by user id (index 0, the padding user, is 0)."""
        return np.diff(self.offsets)

    @property
    def user_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), self.lengths)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @cached_property
    def tokens(self) -> TokenTables:
        """The words of every query and item as token ids (query-aware models, the text-match baseline)."""
        return token_tables(self.vocab.queries, self.item_features, self.n_items)

    @property
    def has_queries(self) -> bool:
        return bool((self.queries > 0).any())


def ad_event_ids(data: SequenceData) -> np.ndarray:
    """Event ids of the impression events (shown; clicked; clicked and bought), those the data has."""
    names = [str(e) for e in data.vocab.events]
    return np.array([names.index(e) for e in AD_EVENTS if e in names], dtype=np.int64)


def ad_labels(data: SequenceData) -> tuple[np.ndarray, np.ndarray]:
    """By event id: (clicked, bought) — an ad click, or an ad click that turned into a purchase."""
    names = np.array([str(e) for e in data.vocab.events], dtype=object)
    return np.isin(names, (AD_CLICK, AD_CONVERSION)), names == AD_CONVERSION


def _ids(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(ids from 1 with 0 for missing, vocabulary with PAD first) in sorted token order."""
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    vocab = np.concatenate([[PAD], np.asarray(uniques, dtype=object)]).astype(object)
    return codes.astype(np.int64) + 1, vocab


def build_sequences(
    events: pd.DataFrame, user_features: pd.DataFrame | None = None, item_features: pd.DataFrame | None = None
) -> SequenceData:
    """From cleaned events, already in chronological order per user (see :func:`cleaning.clean`)."""
    user_ids, users = _ids(events[USER])
    item_ids, items = _ids(events[ITEM])
    event_ids, event_names = _ids(events[EVENT])
    query_ids, queries = _ids(events[QUERY])
    if not np.all(np.diff(user_ids) >= 0):
        raise ValueError("events must be grouped by user before building sequences")
    counts = np.bincount(user_ids, minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    vocab = Vocabulary(users=users, items=items, events=event_names, queries=queries)
    return SequenceData(
        vocab=vocab,
        offsets=offsets,
        items=item_ids.astype(np.int32),
        events=event_ids.astype(np.int16),
        timestamps=events[TIMESTAMP].to_numpy(dtype=np.float64),
        queries=query_ids.astype(np.int32),
        user_features=_aligned(user_features, users),
        item_features=_aligned(item_features, items),
    )


def _aligned(features: pd.DataFrame | None, tokens: np.ndarray) -> pd.DataFrame:
    index = pd.RangeIndex(1, len(tokens))
    if features is None or features.empty:
        return pd.DataFrame(index=index)
    table = features.reindex(pd.Index(tokens[1:], dtype=object)).astype(object)
    table.index = index
    return table.where(table.notna(), "").astype(str)
