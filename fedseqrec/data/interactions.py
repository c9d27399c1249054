"""The canonical interaction table every loader produces.

One row per event, in file order: ``user`` and ``item`` (original ids as strings, missing ids as NA until
cleaning drops them), ``timestamp`` (float epoch seconds, so millisecond logs keep their order), ``event``
(a canonical event type), ``rating`` (float, NaN when the source has none) and ``query`` (space-separated
search tokens, NA when none). User and item features, when the source has them, are string tables indexed
by the original id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

USER, ITEM, TIMESTAMP, EVENT, RATING, QUERY = "user", "item", "timestamp", "event", "rating", "query"
COLUMNS = (USER, ITEM, TIMESTAMP, EVENT, RATING, QUERY)

# Event names differ between logs; these are the ones fedseqrec understands across sources.
VIEW, CART, PURCHASE, FAV, SEARCH, INTERACTION = "view", "cart", "purchase", "fav", "search", "interaction"
# An ad shown and not clicked; clicked and not bought; clicked and bought (the labels of --task ctr).
IMPRESSION, AD_CLICK, AD_CONVERSION = "impression", "ad-click", "ad-conversion"
AD_EVENTS = (IMPRESSION, AD_CLICK, AD_CONVERSION)
EVENT_ALIASES = {
    "view": VIEW,
    "pv": VIEW,
    "click": VIEW,
    "detail": VIEW,
    "cart": CART,
    "addtocart": CART,
    "add_to_cart": CART,
    "purchase": PURCHASE,
    "buy": PURCHASE,
    "transaction": PURCHASE,
    "order": PURCHASE,
    "fav": FAV,
    "favorite": FAV,
    "favourite": FAV,
    "wishlist": FAV,
    "search": SEARCH,
}


@dataclass
class Interactions:
    """A behaviour log in canonical form, plus the optional feature tables and where it came from."""

    events: pd.DataFrame
    user_features: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.events.columns]
        if missing:
            raise ValueError(f"interaction table lacks canonical columns {missing}")

    def __len__(self) -> int:
        return len(self.events)


# What pandas reads as missing by default (``pandas.read_csv``'s ``na_values``). Our readers keep text as it is
# (an id "0001" stays "0001"), so these markers would otherwise become a user or an item named "NaN".
MISSING_MARKERS = frozenset(
    [
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)


def id_tokens(values: pd.Series) -> pd.Series:
    """Ids as strings with NA kept, whatever dtype the reader produced (ints, floats from NA-holding columns);
    the usual missing-value markers (``NaN``, ``NULL``, ``N/A``…) are missing ids, dropped and counted by cleaning.
    Each distinct value is converted once (logs repeat ids millions of times)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    raw = pd.Series(uniques)
    if pd.api.types.is_float_dtype(raw) and len(raw) and np.all(np.mod(raw.to_numpy(), 1) == 0):
        raw = raw.astype(np.int64)
    tokens = raw.astype(str).str.strip().to_numpy(dtype=object)
    tokens[(tokens == "") | np.isin(tokens, list(MISSING_MARKERS))] = pd.NA
    out = np.empty(len(values), dtype=object)
    present = codes >= 0
    out[present] = tokens[codes[present]]
    out[~present] = pd.NA
    return pd.Series(out, index=values.index, dtype=object)


def canonical_events(values: pd.Series | None, length: int) -> np.ndarray:
    """Map source event labels to canonical names; unknown labels are kept, lower-cased, as their own type."""
    if values is None:
        return np.full(length, INTERACTION, dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    labels = pd.Series(uniques, dtype=object).astype(str).str.strip().str.lower()
    names = np.array([EVENT_ALIASES.get(label, label) for label in labels] + [INTERACTION], dtype=object)
    return names[codes]  # code -1 (missing) takes the last entry: INTERACTION


def make_table(
    user: pd.Series,
    item: pd.Series,
    timestamp: np.ndarray,
    event: pd.Series | None = None,
    rating: np.ndarray | None = None,
    query: pd.Series | None = None,
) -> pd.DataFrame:
    """Assemble the canonical table from already-parsed columns of equal length."""
    n = len(user)
    table = pd.DataFrame(
        {
            USER: id_tokens(user).to_numpy(),
            ITEM: id_tokens(item).to_numpy(),
            TIMESTAMP: np.asarray(timestamp, dtype=np.float64),
            EVENT: canonical_events(event, n),
            RATING: np.full(n, np.nan) if rating is None else np.asarray(rating, dtype=np.float64),
            QUERY: pd.Series(pd.NA, index=range(n), dtype=object).to_numpy()
            if query is None
            else query.astype(object).where(query.notna(), pd.NA).to_numpy(),
        }
    )
    return table


def append_users(events: pd.DataFrame, added: pd.DataFrame, event: str) -> pd.DataFrame:
    """``events`` (a cleaned log) with ``added`` users' rows (user, item, timestamp) appended, all of event type
    ``event`` and without rating or query, grouped by user as cleaning leaves the log."""
    added = added.copy()
    added[EVENT] = event
    added[RATING] = np.nan
    added[QUERY] = pd.NA
    for column in events.columns.difference(added.columns):  # cleaning's bookkeeping (file order): after the rest
        numeric = pd.api.types.is_numeric_dtype(events[column])
        added[column] = np.arange(len(added)) + events[column].max() + 1 if numeric else pd.NA
    combined = pd.concat([events, added[events.columns]], ignore_index=True)
    return combined.sort_values(USER, kind="stable", ignore_index=True)
