"""Reading delimited text and Parquet files into string tables, with errors that name the file."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from fedseqrec.errors import DataError

SNIFF_BYTES = 65536


def check_readable_file(path: Path, encoding: str = "utf-8") -> None:
    """Refuse missing, non-regular, unreadable and binary files before a parser gives a cryptic error."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a folder or special file")
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err
    if b"\x00" in head:
        raise DataError(f"{path}: looks like a binary file (NUL bytes), expected delimited text")
    if encoding != "utf-8":
        return
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        # A cut multi-byte character at the end of the sniffed block is not an error.
        if err.start < len(head) - 4:
            raise DataError(
                f"{path}: byte {err.start} is not UTF-8 text (expected a UTF-8 delimited text file)"
            ) from err


def first_line(path: Path) -> str:
    check_readable_file(path)
    with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def sniff_separator(path: Path) -> str:
    """Tab for .tsv/.inter/.data files, otherwise whatever csv.Sniffer sees in the first line (comma by default)."""
    if path.suffix.lower() in {".tsv", ".inter", ".user", ".item", ".data"}:
        return "\t"
    line = first_line(path)
    if "::" in line:
        return "::"
    try:
        return csv.Sniffer().sniff(line, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


CHUNK_ROWS = 500_000  # rows parsed at a time: memory stays bounded, and a bad line is found without reading on


def read_delimited(
    path: Path, sep: str, header: bool = True, names: list[str] | None = None, encoding: str = "utf-8"
) -> pd.DataFrame:
    """All columns as strings (ids keep leading zeros; numbers are parsed later with line numbers)."""
    chunks = [chunk for _, chunk in iter_delimited(path, sep, header, names, encoding)]
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def iter_delimited(
    path: Path,
    sep: str,
    header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(index of its first data row, chunk) for chunks of ``chunk_rows`` rows, all columns as strings; each chunk
    is checked as it is read, so a malformed line stops the reading there."""
    check_readable_file(path, encoding)
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
    text_encoding = "utf-8-sig" if encoding == "utf-8" else encoding
    options: dict = {"sep": sep, "dtype": str, "keep_default_na": False, "na_values": [""], "encoding": text_encoding}
    if len(sep) > 1:
        options["engine"] = "python"
    if not header:
        options["header"] = None
        if names is not None:
            options["names"] = names
    first = 0
    with _parse_errors(path):
        reader = pd.read_csv(path, chunksize=chunk_rows, **options)
    with reader:
        while True:
            with _parse_errors(path):
                chunk = next(reader, None)
            if chunk is None:
                return
            _check_fields(chunk, path, header, names, first)
            chunk.columns = [str(c).strip() for c in chunk.columns]
            yield first, chunk
            first += len(chunk)


@contextmanager
def _parse_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty") from err
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: malformed delimited text: {str(err).strip()}") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from err


def _check_fields(frame: pd.DataFrame, path: Path, header: bool, names: list[str] | None, first: int) -> None:
    """A headerless file read with named columns holds exactly those fields on every line."""
    if names is None or header:
        return
    if frame.shape[1] != len(names):
        raise DataError(f"{path}: expected {len(names)} columns ({', '.join(names)}), found {frame.shape[1]}")
    if len(frame) and frame[names[-1]].isna().any():
        row = int(frame[names[-1]].isna().to_numpy().argmax())  # a short line: pandas fills the missing fields
        found = int(frame.iloc[row].notna().sum())
        raise DataError(
            f"{path}: line {first + row + 1} has {found} fields, the layout expects {len(names)} "
            f"({', '.join(names)}): is --format right for this file?"
        )


def read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return pd.read_parquet(path)
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow ({err})") from err
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err


def require_columns(frame: pd.DataFrame, path: Path, needed: dict[str, str]) -> None:
    """``needed`` maps canonical role -> source column; name every missing one and what the file has."""
    missing = [f"'{col}' (for {role})" for role, col in needed.items() if col not in frame.columns]
    if missing:
        found = ", ".join(repr(c) for c in frame.columns)
        raise DataError(f"{path}: missing column {', '.join(missing)}; the file has columns {found}")
