"""RecBole atomic files: ``NAME.inter`` with a typed ``field:type`` header, optional ``NAME.user`` / ``NAME.item``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedseqrec.data.interactions import EVENT, ITEM, QUERY, RATING, TIMESTAMP, USER, Interactions, id_tokens, make_table
from fedseqrec.data.parsing import Origin, parse_numbers, parse_timestamps
from fedseqrec.data.readers import read_delimited, require_columns
from fedseqrec.errors import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
# RecBole's default field names; a user with other names passes --columns.
DEFAULT_FIELDS = {USER: "user_id", ITEM: "item_id", TIMESTAMP: "timestamp", RATING: "rating"}
OPTIONAL_ROLES = (EVENT, RATING, QUERY)


def find_inter_file(folder: Path) -> Path:
    """The folder's ``.inter`` file: ``<folder name>.inter`` if several (RecBole keeps split files beside it)."""
    candidates = sorted(folder.glob("*.inter"))
    preferred = folder / f"{folder.name}.inter"
    if preferred in candidates:
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{folder}: no .inter file (expected RecBole atomic files such as {folder.name}.inter)")
    names = ", ".join(c.name for c in candidates)
    raise DataError(f"{folder}: several .inter files ({names}); pass the one to load as --data")


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as strings, columns renamed from ``name:type`` to ``name``."""
    frame = read_delimited(path, "\t")
    names = []
    for column in frame.columns:
        name, sep, kind = column.partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise DataError(
                f"{path}: line 1: expected a typed header of name:type fields with type in "
                f"{'/'.join(ATOMIC_TYPES)}, got {column!r}"
            )
        names.append(name)
    frame.columns = names
    return frame


def load_atomic(path: Path, columns: dict[str, str] | None = None, time_unit: str = "auto") -> Interactions:
    inter = path if path.is_file() else find_inter_file(path)
    frame = read_atomic(inter)
    fields = {**DEFAULT_FIELDS, **(columns or {})}
    required = {role: fields[role] for role in (USER, ITEM, TIMESTAMP)}
    require_columns(frame, inter, required)
    optional = {role: fields[role] for role in OPTIONAL_ROLES if fields.get(role) in frame.columns}
    origin = Origin(str(inter))
    events = make_table(
        user=frame[fields[USER]],
        item=frame[fields[ITEM]],
        timestamp=parse_timestamps(frame[fields[TIMESTAMP]], origin, fields[TIMESTAMP], time_unit),
        event=frame[optional[EVENT]] if EVENT in optional else None,
        rating=parse_numbers(frame[optional[RATING]], origin, optional[RATING]) if RATING in optional else None,
        query=frame[optional[QUERY]] if QUERY in optional else None,
    )
    stem = inter.with_suffix("")
    return Interactions(
        events,
        user_features=_feature_table(stem.with_suffix(".user"), fields[USER]),
        item_features=_feature_table(stem.with_suffix(".item"), fields[ITEM]),
        source=str(inter),
        format="recbole",
    )


def _feature_table(path: Path, id_field: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    frame = read_atomic(path)
    require_columns(frame, path, {"id": id_field})
    frame.index = id_tokens(frame.pop(id_field)).to_numpy()
    frame = frame[frame.index.notna()]
    return frame[~frame.index.duplicated(keep="first")].fillna("")
