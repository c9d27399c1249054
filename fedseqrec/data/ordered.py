"""Logs without timestamps, where the order in the file is the time order.

- ``sequences``: one line per user, ``user item item …`` (oldest first), separated by spaces or tabs — the
  ``Beauty.txt`` / ``Sports.txt`` files of the SASRec, S3-Rec, ICLRec and BSARec code;
- ``pairs``: one interaction per line, ``user item`` (spaces, tabs or commas; an optional header naming the two
  columns), in time order within each user.

Events get their position in the file as timestamp (seconds from 0): the order is kept, the gaps carry no
information, and a temporal split or a time-gap feature means nothing for such data (the dataset says so).
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedseqrec.data.eventlog import COLUMN_ALIASES
from fedseqrec.data.interactions import ITEM, USER, Interactions, make_table
from fedseqrec.data.readers import check_readable_file
from fedseqrec.errors import DataError

ORDERED_FORMATS = ("sequences", "pairs")
DETECTION_LINES = 10_000
SEPARATORS = re.compile(r"[ \t,]+")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line, read one at a time: a bad line stops the reading there."""
    check_readable_file(path)
    empty = True
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    empty = False
                    yield number, [sys.intern(f) for f in SEPARATORS.split(line.strip())]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if empty:
        raise DataError(f"{path}: the file is empty")


def _is_header(fields: list[str]) -> bool:
    names = [f.lower() for f in fields]
    return len(names) == 2 and names[0] in COLUMN_ALIASES[USER] and names[1] in COLUMN_ALIASES[ITEM]


def _table(path: Path, users: list[str], items: list[str], fmt: str) -> Interactions:
    order = np.arange(len(users), dtype=np.float64)  # the file's order is the time order
    events = make_table(pd.Series(users, dtype=object), pd.Series(items, dtype=object), order)
    return Interactions(events, source=str(path), format=fmt)


def load_sequences(path: Path) -> Interactions:
    """``user item item …`` per line; each user once."""
    users, items, first_line_of = [], [], {}
    for number, fields in _lines(path):
        user, line_items = fields[0], fields[1:]
        if not line_items:
            raise DataError(f"{path}, line {number}: user {user!r} has no items (expected 'user item item ...')")
        if user in first_line_of:
            raise DataError(
                f"{path}, line {number}: user {user!r} again (first on line {first_line_of[user]}); a "
                "sequence-per-line file has one line per user (interactions one per line: --format pairs)"
            )
        first_line_of[user] = number
        users.extend([user] * len(line_items))
        items.extend(line_items)
    return _table(path, users, items, "sequences")


def load_pairs(path: Path) -> Interactions:
    """``user item`` per line, in time order within each user; an optional header."""
    users, items = [], []
    for index, (number, fields) in enumerate(_lines(path)):
        if index == 0 and _is_header(fields):
            continue
        if len(fields) != 2:
            raise DataError(
                f"{path}, line {number}: expected 2 fields (user item), found {len(fields)}: {' '.join(fields)[:80]!r}"
            )
        users.append(fields[0])
        items.append(fields[1])
    if not users:
        raise DataError(f"{path}: a header and no interactions")
    return _table(path, users, items, "pairs")


def ordered_format(path: Path, first_line: str) -> str | None:
    """``sequences`` or ``pairs`` when the file can only be one of them, from its lines; else None.

    A header naming user and item (any separator) means pairs. Without one, only files separated by spaces or
    tabs are read as ids (a comma-separated file is a CSV with a header): lines that all hold two fields are
    pairs (the two readings then give the same interactions), lines of two or more fields are sequences. The
    first ``DETECTION_LINES`` lines decide; the loader checks every line."""
    first = SEPARATORS.split(first_line.strip())
    if _is_header(first):
        return "pairs"
    if "," in first_line:
        return None
    if len(first) < 2 or any(f.lower() in COLUMN_ALIASES[USER] + COLUMN_ALIASES[ITEM] for f in first):
        return None
    widths = {len(fields) for _, fields in itertools.islice(_lines(path), DETECTION_LINES)}
    if widths == {2}:
        return "pairs"
    return "sequences" if min(widths) >= 2 else None


LOADERS = {"sequences": load_sequences, "pairs": load_pairs}
