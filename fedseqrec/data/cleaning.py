"""Cleaning the canonical table: missing ids, duplicates, implicit-feedback threshold, k-core, time order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import COLUMNS, ITEM, RATING, TIMESTAMP, USER, Interactions
from fedseqrec.errors import DataError, UserError

FILE_ORDER = "_row"


@dataclass(frozen=True)
class CleaningOptions:
    min_rating: float | None = None  # keep rows whose rating is at least this (implicit feedback)
    user_core: int = 0  # k-core: every user keeps at least this many interactions (0 = off)
    item_core: int = 0  # k-core: every item keeps at least this many interactions (0 = off)

    def validate(self) -> None:
        if self.user_core < 0 or self.item_core < 0:
            raise UserError("k-core thresholds must be >= 0")


@dataclass
class CleaningReport:
    """How many rows each step removed, so stats can explain where interactions went."""

    loaded: int = 0
    missing_ids: int = 0
    duplicates: int = 0
    below_rating: int = 0
    k_core: int = 0
    k_core_rounds: int = 0
    truncated: int = 0  # events before each user's most recent --max-len
    items_loaded: int = 0
    items_kept: int = 0
    users_loaded: int = 0
    users_kept: int = 0


def clean(log: Interactions, options: CleaningOptions = CleaningOptions()) -> tuple[pd.DataFrame, CleaningReport]:
    """Cleaned events in a stable chronological order per user (ties keep file order)."""
    options.validate()
    report = CleaningReport(
        loaded=len(log.events), items_loaded=log.events[ITEM].nunique(), users_loaded=log.events[USER].nunique()
    )
    events = log.events.copy()
    events[FILE_ORDER] = np.arange(len(events))

    keep = events[USER].notna() & events[ITEM].notna()
    report.missing_ids = int((~keep).sum())
    events = events[keep]

    # Exact duplicates: the same event recorded twice (missing values compare equal).
    duplicated = events.duplicated(subset=list(COLUMNS), keep="first")
    report.duplicates = int(duplicated.sum())
    events = events[~duplicated]

    if options.min_rating is not None:
        if events[RATING].isna().all():
            raise DataError(f"{log.source}: --min-rating needs ratings, and this data has none")
        keep = events[RATING] >= options.min_rating
        report.below_rating = int((~keep).sum())
        events = events[keep]

    before = len(events)
    events, report.k_core_rounds = k_core(events, options.user_core, options.item_core)
    report.k_core = before - len(events)

    if events.empty:
        raise DataError(f"{log.source}: nothing left after cleaning ({_explain(report, options)})")
    events = events.sort_values([USER, TIMESTAMP, FILE_ORDER], kind="stable")
    report.items_kept, report.users_kept = events[ITEM].nunique(), events[USER].nunique()
    return events.reset_index(drop=True), report


def k_core(events: pd.DataFrame, user_core: int, item_core: int) -> tuple[pd.DataFrame, int]:
    """Drop users and items below their thresholds until none is (a fixed point); returns rounds taken."""
    rounds = 0
    if user_core <= 1 and item_core <= 1:
        return events, rounds
    while True:
        rounds += 1
        user_counts = events[USER].map(events[USER].value_counts())
        item_counts = events[ITEM].map(events[ITEM].value_counts())
        keep = (user_counts >= user_core) & (item_counts >= item_core)
        if keep.all():
            return events, rounds
        events = events[keep]


def _explain(report: CleaningReport, options: CleaningOptions) -> str:
    parts = [f"{report.loaded} rows loaded"]
    if report.missing_ids:
        parts.append(f"{report.missing_ids} with a missing user or item id")
    if report.below_rating:
        parts.append(f"{report.below_rating} rated below {options.min_rating:g}")
    if report.k_core:
        parts.append(f"{report.k_core} removed by the {options.user_core}/{options.item_core} k-core filter")
    return ", ".join(parts)


def keep_most_recent(events: pd.DataFrame, max_len: int, report: CleaningReport | None = None) -> pd.DataFrame:
    """Each user's most recent ``max_len`` events, of events already in chronological order per user."""
    if max_len < 1:
        raise UserError(f"--max-len must be >= 1, got {max_len}")
    from_end = events.groupby(USER, sort=False).cumcount(ascending=False)
    kept = events[from_end.to_numpy() < max_len].reset_index(drop=True)
    if report is not None:
        report.truncated = len(events) - len(kept)
        report.items_kept = kept[ITEM].nunique()
    return kept


def cleaning_summary(report: CleaningReport | None) -> str | None:
    """What cleaning removed, in one line (None: nothing, or no report: a prepared folder was cleaned before)."""
    if report is None:
        return None
    steps = [
        (report.missing_ids, "with a missing id"),
        (report.duplicates, "duplicates"),
        (report.below_rating, "below --min-rating"),
        (report.k_core, "by the k-core filter"),
        (report.truncated, "before each user's most recent --max-len"),
    ]
    removed = sum(n for n, _ in steps)
    if not removed:
        return None
    share = removed / max(1, report.loaded)
    reasons = ", ".join(f"{n:,} {why}" for n, why in steps if n)
    line = f"removed {removed:,} of {report.loaded:,} interactions ({share:.1%}: {reasons})"
    lost = [(report.users_loaded - report.users_kept, "users"), (report.items_loaded - report.items_kept, "items")]
    lost_text = " and ".join(f"{n:,} {what}" for n, what in lost if n > 0)
    return line + (f"; {lost_text} left with no interaction" if lost_text else "")
