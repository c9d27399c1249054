"""Delimited-text and Parquet event logs: a column mapping, or a preset for a well-known public layout."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from fedseqrec.data.interactions import EVENT, ITEM, QUERY, RATING, TIMESTAMP, USER, Interactions, id_tokens, make_table
from fedseqrec.data.parsing import Origin, parse_numbers, parse_timestamps
from fedseqrec.data.readers import read_delimited, read_parquet, require_columns, sniff_separator
from fedseqrec.errors import DataError

ROLES = (USER, ITEM, TIMESTAMP, EVENT, RATING, QUERY)
REQUIRED_ROLES = (USER, ITEM, TIMESTAMP)

# Column names seen in public logs, tried in order when no mapping is given.
COLUMN_ALIASES = {
    USER: ("user", "user_id", "userid", "visitorid", "visitor_id", "customer_id", "uid"),
    ITEM: ("item", "item_id", "itemid", "product_id", "productid", "movie_id", "sku", "iid"),
    TIMESTAMP: ("timestamp", "time", "ts", "event_time", "datetime", "unix_time", "date"),
    EVENT: ("event", "event_type", "behavior", "behaviour", "behavior_type", "action"),
    RATING: ("rating", "score"),
    QUERY: ("query", "search_query", "search"),
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


def read_log_frame(path: Path, layout: LogLayout) -> tuple[pd.DataFrame, Origin]:
    if path.suffix.lower() == ".parquet":
        return read_parquet(path), Origin(str(path), first_line=1, unit="row")
    sep = layout.sep or sniff_separator(path)
    names = list(layout.names) if layout.names else None
    frame = read_delimited(path, sep, header=layout.header, names=names)
    return frame, Origin(str(path), first_line=2 if layout.header else 1)


def load_event_log(path: Path, layout: LogLayout) -> Interactions:
    frame, origin = read_log_frame(path, layout)
    mapping = dict(layout.columns) or guess_columns(list(frame.columns))
    needed = {role: mapping.get(role, COLUMN_ALIASES[role][0]) for role in REQUIRED_ROLES}
    needed.update({role: col for role, col in mapping.items() if role not in REQUIRED_ROLES})
    require_columns(frame, path, needed)
    events = make_table(
        user=frame[needed[USER]],
        item=frame[needed[ITEM]],
        timestamp=parse_timestamps(frame[needed[TIMESTAMP]], origin, needed[TIMESTAMP], layout.time_unit),
        event=frame[needed[EVENT]] if EVENT in needed else None,
        rating=parse_numbers(frame[needed[RATING]], origin, needed[RATING]) if RATING in needed else None,
        query=frame[needed[QUERY]] if QUERY in needed else None,
    )
    return Interactions(
        events,
        item_features=_item_features(frame, needed[ITEM], layout.item_feature_columns),
        source=str(path),
        format=layout.name,
    )


def _item_features(frame: pd.DataFrame, item_column: str, feature_columns: tuple[str, ...]) -> pd.DataFrame | None:
    present = [c for c in feature_columns if c in frame.columns]
    if not present:
        return None
    features = frame[present].astype(object).copy()
    features.index = id_tokens(frame[item_column]).to_numpy()
    features = features[features.index.notna()]
    return features[~features.index.duplicated(keep="first")].astype(str)


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
