"""Column parsing that reports the exact file, column and line of the first bad value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedseqrec.errors import DataError

# Beyond this an epoch value is not a plausible timestamp in seconds (year 2100); larger values are
# read as milliseconds in auto mode.
LATEST_SECONDS = 4_102_444_800.0
MILLISECONDS_ABOVE = 1e11
TIME_UNITS = ("auto", "s", "ms")


@dataclass(frozen=True)
class Origin:
    """Where rows came from, so errors can name the file and the line a person would open."""

    path: str
    first_line: int = 2  # line number of data row 0: 2 below a header, 1 without one
    unit: str = "line"  # "line" for text files, "row" for Parquet

    def where(self, row: int) -> str:
        return f"{self.path}: {self.unit} {row + self.first_line}"


@dataclass
class TimeUnitSeen:
    """The unit of the first epoch numbers of a column read chunk by chunk (auto mode): every later chunk must be
    in the same one, as within one chunk."""

    millis: bool | None = None
    where: str = ""  # "line N" of that first value
    value: object = None


def parse_numbers(raw: pd.Series, origin: Origin, column: str, allow_missing: bool = True) -> np.ndarray:
    """Numbers as float64; a non-numeric value is an error naming its line."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isnan(values) & raw.notna().to_numpy())
        if len(bad):
            row = int(bad[0])
            raise DataError(f"{origin.where(row)}: column '{column}': expected a number, got {raw.iloc[row]!r}")
    if not allow_missing:
        _refuse_missing(values, origin, column)
    return values


def parse_timestamps(
    raw: pd.Series, origin: Origin, column: str, unit: str = "auto", seen: TimeUnitSeen | None = None
) -> np.ndarray:
    """Epoch seconds (float) from epoch seconds, epoch milliseconds or ISO-8601 text; ``seen``: the unit earlier
    chunks of the column were read in."""
    if unit not in TIME_UNITS:
        raise DataError(f"unknown time unit {unit!r}: expected one of {', '.join(TIME_UNITS)}")
    present = raw.notna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(raw):
        seconds = _datetime_seconds(pd.to_datetime(raw, utc=True))
    elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        numeric = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        _refuse_mixed_units(numeric, raw, origin, column, unit, seen)
        seconds = _epoch_seconds(numeric, unit)
    else:
        text = raw.astype(object).where(raw.notna(), None)
        numeric = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.all(~np.isnan(numeric) | ~present):
            _refuse_mixed_units(numeric, raw, origin, column, unit, seen)
            seconds = _epoch_seconds(numeric, unit)
        elif np.all(np.isnan(numeric[present])):
            parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
            seconds = _datetime_seconds(parsed)
        else:
            seconds = np.full(len(raw), np.nan)  # mixed numbers and text: report the first odd one out
            seconds[~np.isnan(numeric)] = 0.0
        bad = np.flatnonzero(np.isnan(seconds) & present)
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{origin.where(row)}: column '{column}': expected epoch seconds, epoch milliseconds or "
                f"ISO-8601 date-time, got {raw.iloc[row]!r}"
            )
    _refuse_missing(seconds, origin, column)
    impossible = np.flatnonzero(~np.isfinite(seconds) | (seconds < 0) | (seconds > LATEST_SECONDS))
    if len(impossible):
        row = int(impossible[0])
        raise DataError(
            f"{origin.where(row)}: column '{column}': impossible timestamp {raw.iloc[row]!r} "
            "(expected a time between 1970 and 2100)"
        )
    return seconds


def _refuse_mixed_units(
    values: np.ndarray, raw: pd.Series, origin: Origin, column: str, unit: str, seen: TimeUnitSeen | None = None
) -> None:
    """Auto mode reads a column as milliseconds when any value is beyond seconds' range: a column mixing the two
    would put its seconds rows in January 1970 and reorder the events, so it is refused with a row of each. An
    infinite value is no time at all, in either unit: named first."""
    infinite = np.flatnonzero(np.isinf(values))
    if len(infinite):
        row = int(infinite[0])
        raise DataError(
            f"{origin.where(row)}: column '{column}': {raw.iloc[row]!r} is not a time (expected epoch seconds, "
            "epoch milliseconds or ISO-8601 date-time)"
        )
    if unit != "auto":
        return
    millis = values > MILLISECONDS_ABOVE
    seconds = (values <= MILLISECONDS_ABOVE) & ~np.isnan(values)
    if not (millis.any() or seconds.any()):
        return
    first = int(np.flatnonzero(millis | seconds)[0])
    seen = seen if seen is not None else TimeUnitSeen()
    if seen.millis is None:
        seen.millis, seen.value = bool(millis[first]), raw.iloc[first]
        seen.where = f"{origin.unit} {first + origin.first_line}"
    odd_ones = seconds if seen.millis else millis
    if not odd_ones.any():
        return
    odd = int(np.flatnonzero(odd_ones)[0])
    kinds = ("milliseconds", "seconds") if seen.millis else ("seconds", "milliseconds")
    raise DataError(
        f"{origin.where(odd)}: column '{column}': {raw.iloc[odd]!r} is epoch {kinds[1]}, but "
        f"{seen.where} ({seen.value!r}) is epoch {kinds[0]}: one column must use one unit (convert the file, or "
        "give --time-unit s or ms)"
    )


def _epoch_seconds(values: np.ndarray, unit: str) -> np.ndarray:
    if unit == "ms" or (unit == "auto" and np.nanmax(np.abs(values), initial=0.0) > MILLISECONDS_ABOVE):
        return values / 1000.0
    return values


def _datetime_seconds(parsed: pd.Series) -> np.ndarray:
    # Subtracting the epoch is independent of the datetime resolution pandas chose (ns, us, ...).
    delta = pd.Series(parsed) - pd.Timestamp("1970-01-01", tz="UTC")
    return (delta / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _refuse_missing(values: np.ndarray, origin: Origin, column: str) -> None:
    missing = np.flatnonzero(np.isnan(values))
    if len(missing):
        raise DataError(f"{origin.where(int(missing[0]))}: column '{column}': value is missing")
