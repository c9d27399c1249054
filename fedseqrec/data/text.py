"""Words of search queries and of item descriptions, as token ids shared by both.

A query (``Vocabulary.queries``) and an item's text (its string feature columns, e.g. the shop's category and
price band, or a title) are lower-cased and cut at every character that is not a letter or a digit. Token ids
run from 1 in sorted token order over queries and items together (0 = padding), so a deterministic function of
the data: the server and every client derive the same ids from the same data. Queries keep their first
``MAX_QUERY_TOKENS`` tokens, item texts their first ``MAX_ITEM_TOKENS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_QUERY_TOKENS = 8
MAX_ITEM_TOKENS = 16
_SPLIT = re.compile(r"[^0-9a-z]+")


def words(text: str) -> list[str]:
    return [w for w in _SPLIT.split(str(text).lower()) if w]


@dataclass(frozen=True)
class TokenTables:
    """``queries[q]``: the token ids of query id ``q`` (row 0: no query), right-padded with 0; ``items[i]``: those
    of item id ``i``'s text; ``vocabulary[t]``: the word of token id ``t`` (index 0: padding)."""

    queries: np.ndarray  # (n_queries + 1, MAX_QUERY_TOKENS) int64
    items: np.ndarray  # (n_items + 1, MAX_ITEM_TOKENS) int64
    vocabulary: np.ndarray  # object

    @property
    def n_tokens(self) -> int:
        return len(self.vocabulary) - 1

    def encode(self, text: str) -> np.ndarray:
        """A new query's token ids (words never seen in the data are dropped), padded to MAX_QUERY_TOKENS."""
        index = {w: i for i, w in enumerate(self.vocabulary) if i}
        return _padded([[index[w] for w in words(text) if w in index]], MAX_QUERY_TOKENS)[0]


def token_tables(queries: np.ndarray, item_features: pd.DataFrame, n_items: int) -> TokenTables:
    """``queries``: query strings by id (index 0: padding); ``item_features``: string columns by item id 1..n."""
    query_words = [[] if q == 0 else words(text) for q, text in enumerate(queries)]
    item_words = [[] for _ in range(n_items + 1)]
    for item, row in zip(item_features.index, item_features.itertuples(index=False), strict=True):  # all strings
        item_words[int(item)] = [w for value in row for w in words(value)]
    vocabulary = np.array(["[PAD]", *sorted({w for ws in query_words + item_words for w in ws})], dtype=object)
    index = {w: i for i, w in enumerate(vocabulary) if i}
    return TokenTables(
        queries=_padded([[index[w] for w in ws] for ws in query_words], MAX_QUERY_TOKENS),
        items=_padded([[index[w] for w in ws] for ws in item_words], MAX_ITEM_TOKENS),
        vocabulary=vocabulary,
    )


def _padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, ids in enumerate(rows):
        ids = ids[:width]
        out[r, : len(ids)] = ids
    return out
