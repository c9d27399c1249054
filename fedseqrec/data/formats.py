"""Which loader reads ``--data``: built-in names, explicit ``--format`` values and auto-detection."""

from __future__ import annotations

from pathlib import Path

from fedseqrec.data.atomic import load_atomic
from fedseqrec.data.eventlog import PRESETS, guess_columns, layout_for, load_event_log, parse_column_mapping
from fedseqrec.data.interactions import Interactions
from fedseqrec.data.movielens import RATINGS_FILES, find_ratings_file, load_movielens
from fedseqrec.data.ordered import LOADERS as ORDERED_LOADERS
from fedseqrec.data.ordered import ORDERED_FORMATS, ordered_format
from fedseqrec.data.readers import first_line, sniff_separator
from fedseqrec.errors import DataError, UserError

BUILTIN_DATASETS = ("shop",)
FORMATS = ("auto", "recbole", "movielens", "csv", "tsv", "parquet", *PRESETS, *ORDERED_FORMATS, "prepared")
MANIFEST = "manifest.json"
PRESET_FILES = {"events.csv": "retailrocket", "UserBehavior.csv": "taobao"}
TAOBAO_BEHAVIOURS = {"pv", "cart", "fav", "buy"}


def resolve_path(data: str) -> Path:
    """The path ``--data`` names, or an error that says it is neither a file, a folder nor a built-in name."""
    path = Path(data).expanduser()
    if path.exists():
        return path
    if path.is_symlink():
        raise DataError(f"{data}: a symbolic link that leads nowhere (its target is missing, or links loop)")
    looks_like_path = any(sep in data for sep in ("/", "\\")) or path.suffix != ""
    if looks_like_path:
        raise DataError(f"{data}: no such file or folder")
    raise UserError(
        f"unknown dataset {data!r}: not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
        "and no file or folder of that name"
    )


def detect_format(path: Path) -> str:
    if path.is_dir():
        return _detect_folder(path)
    name, suffix = path.name, path.suffix.lower()
    if suffix == ".inter":
        return "recbole"
    if name in RATINGS_FILES:
        return "movielens"
    if suffix == ".parquet":
        return "parquet"
    if name in PRESET_FILES:
        return PRESET_FILES[name]
    return _detect_text(path)


def _detect_folder(path: Path) -> str:
    if (path / MANIFEST).is_file():
        return "prepared"
    if any(path.glob("*.inter")):
        return "recbole"
    if find_ratings_file(path) is not None:
        return "movielens"
    for name, preset in PRESET_FILES.items():
        if (path / name).is_file():
            return preset
    raise DataError(
        f"{path}: no known dataset in this folder (expected a fedseqrec prepared folder, RecBole *.inter files, "
        "MovieLens u.data/ratings.dat, RetailRocket events.csv or Taobao UserBehavior.csv)"
    )


def _detect_text(path: Path) -> str:
    line = first_line(path)
    sep = sniff_separator(path)
    fields = [f.strip() for f in line.split(sep)]
    if all(":" in f for f in fields) and sep == "\t" and any(f.startswith("user_id:") for f in fields):
        return "recbole"
    if {"visitorid", "itemid", "event"} <= set(fields):
        return "retailrocket"
    if len(fields) == 5 and fields[3] in TAOBAO_BEHAVIOURS and fields[0].isdigit():
        return "taobao"
    if {"user", "item", "timestamp"} <= set(guess_columns(fields)):
        return "tsv" if sep == "\t" else "csv"
    ordered = ordered_format(path, line)
    if ordered is not None:
        return ordered
    raise DataError(
        f"{path}: cannot tell the layout from its first line {line[:80]!r}; expected a header naming user, item "
        "and timestamp columns (or pass --format and --columns user=...,item=...,timestamp=...), or ids without "
        "timestamps: 'user item item ...' per line (--format sequences) or 'user item' per line (--format pairs)"
    )


def file_in(path: Path, fmt: str) -> Path:
    """For presets given a folder, the preset's file inside it."""
    if path.is_dir():
        wanted = next((n for n, p in PRESET_FILES.items() if p == fmt), None)
        if wanted is None or not (path / wanted).is_file():
            raise DataError(f"{path}: is a folder; pass the {fmt} file itself as --data")
        return path / wanted
    return path


def load_interactions(
    path: Path, fmt: str = "auto", columns: str | None = None, sep: str | None = None, time_unit: str = "auto"
) -> Interactions:
    """Read a behaviour log in any supported layout into the canonical table."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "prepared":  # (a prepared folder is loaded before this; anything else asked to be one is not)
        raise UserError(
            f"{path}: --format prepared, but this is not a folder written by `fedseqrec data prepare`; give its "
            "own format (or auto)"
        )
    if fmt == "recbole":
        return load_atomic(path, parse_column_mapping(columns) if columns else None, time_unit)
    if fmt == "movielens":
        return load_movielens(path, time_unit)
    if fmt in ORDERED_LOADERS:
        return ORDERED_LOADERS[fmt](file_in(path, fmt))
    if fmt == "tsv" and not sep:
        sep = "\t"
    return load_event_log(file_in(path, fmt), layout_for(fmt, columns, sep, time_unit))
