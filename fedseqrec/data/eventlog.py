"""Delimited-text and Parquet event logs: a column mapping, or a preset for a well-known public layout."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import (
    AD_CLICK,
    AD_CONVERSION,
    EVENT,
    IMPRESSION,
    ITEM,
    QUERY,
    RATING,
    TIMESTAMP,
    USER,
    Interactions,
    id_tokens,
    make_table,
)
from fedseqrec.data.parsing import Origin, TimeUnitSeen, parse_numbers, parse_timestamps
from fedseqrec.data.readers import iter_delimited, read_parquet, require_columns, sniff_separator
from fedseqrec.errors import DataError

CLICK, BOUGHT = "click", "purchase"  # ad labels (--task ctr): rows that carry them are ad impressions
ROLES = (USER, ITEM, TIMESTAMP, EVENT, RATING, QUERY, CLICK, BOUGHT)
REQUIRED_ROLES = (USER, ITEM, TIMESTAMP)

# Column names seen in public logs, tried in order when no mapping is given.
COLUMN_ALIASES = {
    USER: ("user", "user_id", "userid", "visitorid", "visitor_id", "customer_id", "uid"),
    ITEM: ("item", "item_id", "itemid", "product_id", "productid", "movie_id", "sku", "iid"),
    TIMESTAMP: ("timestamp", "time", "ts", "event_time", "datetime", "unix_time", "date"),
    EVENT: ("event", "event_type", "behavior", "behaviour", "behavior_type", "action"),
    RATING: ("rating", "score"),
    QUERY: ("query", "search_query", "search"),
    CLICK: ("click", "clicked", "is_click"),
    BOUGHT: ("purchase", "purchased", "is_purchase", "conversion"),
}


@dataclass(frozen=True)
class LogLayout:
    """How one kind of event log is laid out: which column plays which role, and how to read the file."""

    name: str
    columns: dict[str, str] = field(default_factory=dict)  # role -> source column; empty = guess by name
    sep: str | None = None  # None = from the file name, else sniffed
    header: bool = True
    names: tuple[str, ...] | None = None  # column names of a headerless file
    time_unit: str = "auto"
    item_feature_columns: tuple[str, ...] = ()


PRESETS: dict[str, LogLayout] = {
    # RetailRocket events.csv: timestamp (ms),visitorid,event,itemid,transactionid
    "retailrocket": LogLayout(
        "retailrocket",
        {USER: "visitorid", ITEM: "itemid", TIMESTAMP: "timestamp", EVENT: "event"},
        sep=",",
        time_unit="ms",
    ),
    # Taobao UserBehavior.csv, no header: user,item,category,behaviour (pv/cart/fav/buy),timestamp (s)
    "taobao": LogLayout(
        "taobao",
        {USER: "user", ITEM: "item", TIMESTAMP: "timestamp", EVENT: "behavior"},
        sep=",",
        header=False,
        names=("user", "item", "category", "behavior", "timestamp"),
        time_unit="s",
        item_feature_columns=("category",),
    ),
}


def parse_column_mapping(text: str) -> dict[str, str]:
    """``"user=visitorid,item=itemid,timestamp=ts"`` -> {role: column}; roles are checked."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, column = part.partition("=")
        role = role.strip().lower()
        if not sep or not column.strip():
            raise DataError(f"--columns: expected ROLE=COLUMN pairs separated by commas, got {part!r}")
        if role not in ROLES:
            raise DataError(f"--columns: unknown role {role!r}; roles are {', '.join(ROLES)}")
        mapping[role] = column.strip()
    return mapping


def guess_columns(columns: list[str]) -> dict[str, str]:
    lowered = {c.lower(): c for c in columns}
    mapping = {}
    for role, aliases in COLUMN_ALIASES.items():
        match = next((lowered[a] for a in aliases if a in lowered), None)
        if match is not None and match not in mapping.values():
            mapping[role] = match
    return mapping


def log_chunks(path: Path, layout: LogLayout) -> Iterator[tuple[pd.DataFrame, Origin]]:
    """The log in chunks of rows, each with where its rows came from (a text file is read a chunk at a time)."""
    if path.suffix.lower() == ".parquet":
        yield read_parquet(path), Origin(str(path), first_line=1, unit="row")
        return
    sep = layout.sep or sniff_separator(path)
    names = list(layout.names) if layout.names else None
    first_line = 2 if layout.header else 1
    for first, frame in iter_delimited(path, sep, header=layout.header, names=names):
        yield frame, Origin(str(path), first_line=first_line + first)


def load_event_log(path: Path, layout: LogLayout) -> Interactions:
    """The log in canonical form, read a chunk at a time: memory holds the canonical table and one chunk of
    text, and a bad value stops the reading at its chunk."""
    tables, features, needed = [], [], None
    times = TimeUnitSeen()  # every chunk's epoch numbers in one unit
    for frame, origin in log_chunks(path, layout):
        if needed is None:
            needed = _needed_columns(frame, path, layout)
        tables.append(_canonical_chunk(frame, needed, origin, layout, times))
        features.append(_item_features(frame, needed[ITEM], layout.item_feature_columns))
        del frame
    events = _concatenated(tables)
    present = [f for f in features if f is not None]
    item_features = _first_per_item(pd.concat(present)) if len(present) > 1 else (present or [None])[0]
    return Interactions(events, item_features=item_features, source=str(path), format=layout.name)


def _concatenated(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The chunks' tables as one, a column at a time, each chunk's column freed once copied: the peak is the table
    and one column more, not the table twice."""
    if len(tables) == 1:
        return tables[0]
    columns = {}
    for name in list(tables[0].columns):
        columns[name] = pd.concat([t[name] for t in tables], ignore_index=True)
        for table in tables:
            del table[name]
    return pd.DataFrame(columns, copy=False)


def _first_per_item(features: pd.DataFrame) -> pd.DataFrame:
    """Each item's features from its first row. (Factorized, not ``Index.duplicated``: a string index is then
    hashed where it lies, without a Python string per row.)"""
    codes, _ = pd.factorize(features.index)
    _, first = np.unique(codes, return_index=True)
    return features.iloc[np.sort(first)]


def _needed_columns(frame: pd.DataFrame, path: Path, layout: LogLayout) -> dict[str, str]:
    """role -> column of the file, from the layout or guessed from the header; every required one present."""
    mapping = dict(layout.columns) or guess_columns(list(frame.columns))
    needed = {role: mapping.get(role, COLUMN_ALIASES[role][0]) for role in REQUIRED_ROLES}
    needed.update({role: col for role, col in mapping.items() if role not in REQUIRED_ROLES})
    require_columns(frame, path, needed)
    return needed


def _canonical_chunk(
    frame: pd.DataFrame, needed: dict[str, str], origin: Origin, layout: LogLayout, times: TimeUnitSeen
) -> pd.DataFrame:
    event = frame[needed[EVENT]] if EVENT in needed else None
    if CLICK in needed or BOUGHT in needed:
        event = ad_events(frame, needed, origin, event)
    return make_table(
        user=frame[needed[USER]],
        item=frame[needed[ITEM]],
        timestamp=parse_timestamps(frame[needed[TIMESTAMP]], origin, needed[TIMESTAMP], layout.time_unit, times),
        event=event,
        rating=parse_numbers(frame[needed[RATING]], origin, needed[RATING]) if RATING in needed else None,
        query=frame[needed[QUERY]] if QUERY in needed else None,
    )


def ad_events(frame: pd.DataFrame, needed: dict[str, str], origin: Origin, event: pd.Series | None) -> pd.Series:
    """Rows with ad labels become impressions: ``impression`` (click 0), ``ad-click`` (click 1, purchase 0) or
    ``ad-conversion`` (click 1, purchase 1); rows with neither label keep their event. Labels must be 0 or 1, and a
    purchase needs a click (a conversion is a clicked ad that was bought)."""
    if CLICK not in needed:
        raise DataError(
            f"{origin.path}: a `{needed[BOUGHT]}` column of ad purchases needs the `click` column too "
            "(--columns click=COL)"
        )
    labels = {}
    for role in (CLICK, BOUGHT):
        if role not in needed:
            labels[role] = np.zeros(len(frame))
            continue
        values = parse_numbers(frame[needed[role]], origin, needed[role])
        bad = np.flatnonzero(~np.isnan(values) & ~np.isin(values, (0.0, 1.0)))
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{origin.where(row)}: column '{needed[role]}': an ad label must be 0 or 1, got "
                f"{frame[needed[role]].iloc[row]!r}"
            )
        labels[role] = values
    click, bought = labels[CLICK], labels[BOUGHT]
    wrong = np.flatnonzero((bought == 1) & (click != 1))
    if len(wrong):
        raise DataError(
            f"{origin.where(int(wrong[0]))}: a purchase of an ad that was not clicked (purchase 1, click "
            f"{frame[needed[CLICK]].iloc[int(wrong[0])]!r}): a conversion follows a click"
        )
    shown = ~np.isnan(click)
    named = np.where(bought == 1, AD_CONVERSION, np.where(click == 1, AD_CLICK, IMPRESSION)).astype(object)
    base = event.astype(object).to_numpy() if event is not None else np.full(len(frame), None, dtype=object)
    return pd.Series(np.where(shown, named, base), index=frame.index, dtype=object)


def _item_features(frame: pd.DataFrame, item_column: str, feature_columns: tuple[str, ...]) -> pd.DataFrame | None:
    present = [c for c in feature_columns if c in frame.columns]
    if not present:
        return None
    ids = id_tokens(frame[item_column])
    first = (ids.notna() & ~ids.duplicated(keep="first")).to_numpy()  # each item's first row
    features = frame.loc[first, present].astype(str)  # (text columns: compact string arrays, not objects)
    features.index = pd.Index(ids[first].to_numpy(), dtype=str)
    return features


def layout_for(name: str, columns: str | None, sep: str | None, time_unit: str) -> LogLayout:
    """The preset called ``name`` (or the generic layout) with the user's overrides applied."""
    base = PRESETS.get(name, LogLayout(name))
    overrides: dict = {}
    if columns:
        overrides["columns"] = parse_column_mapping(columns)
    if sep:
        overrides["sep"] = "\t" if sep in ("\\t", "tab") else sep
    if time_unit != "auto":
        overrides["time_unit"] = time_unit
    return replace(base, **overrides)
