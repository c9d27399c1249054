"""MovieLens raw dumps: ml-100k's ``u.data`` (tab-separated) and ml-1m's ``ratings.dat`` (``::``-separated).

When the dump's user and movie files sit beside the ratings (``u.user``/``u.item``, ``users.dat``/``movies.dat``)
their features are loaded too, so ``attribute`` and ``dirichlet`` partitions work on raw MovieLens as well.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedseqrec.data.eventlog import LogLayout, load_event_log
from fedseqrec.data.interactions import ITEM, RATING, TIMESTAMP, USER, Interactions, id_tokens
from fedseqrec.data.readers import read_delimited
from fedseqrec.errors import DataError

RATING_COLUMNS = ("user", "item", "rating", "timestamp")
RATING_ROLES = {USER: "user", ITEM: "item", RATING: "rating", TIMESTAMP: "timestamp"}
RATINGS_FILES = {"u.data": "\t", "ratings.dat": "::"}
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def find_ratings_file(folder: Path) -> Path | None:
    return next((folder / name for name in RATINGS_FILES if (folder / name).is_file()), None)


def load_movielens(path: Path, time_unit: str = "auto") -> Interactions:
    ratings = path if path.is_file() else find_ratings_file(path)
    if ratings is None:
        raise DataError(f"{path}: no MovieLens ratings file (expected u.data or ratings.dat)")
    sep = RATINGS_FILES.get(ratings.name) or ("::" if ratings.suffix == ".dat" else "\t")
    layout = LogLayout("movielens", RATING_ROLES, sep=sep, header=False, names=RATING_COLUMNS, time_unit=time_unit)
    log = load_event_log(ratings, layout)
    folder = ratings.parent
    if sep == "\t":
        log.user_features = _features(folder / "u.user", "|", ("user_id", "age", "gender", "occupation", "zip_code"))
        log.item_features = _ml100k_items(folder / "u.item")
    else:
        log.user_features = _features(
            folder / "users.dat", "::", ("user_id", "gender", "age", "occupation", "zip_code")
        )
        log.item_features = _features(folder / "movies.dat", "::", ("item_id", "title", "genre"))
    log.format = "movielens"
    return log


def _features(path: Path, sep: str, names: tuple[str, ...]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    # MovieLens ships its user and movie files in Latin-1.
    frame = read_delimited(path, sep, header=False, names=list(names), encoding="latin-1")
    frame.index = id_tokens(frame.pop(names[0])).to_numpy()
    if "genre" in frame.columns:
        frame["genre"] = frame["genre"].str.replace("|", " ", regex=False)
    return frame.fillna("")


def _ml100k_items(path: Path) -> pd.DataFrame | None:
    names = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    if not path.is_file():
        return None
    frame = read_delimited(path, "|", header=False, names=names, encoding="latin-1")
    flags = frame[list(ML100K_GENRES)].astype(str) == "1"
    genres = flags.apply(lambda row: " ".join(g for g, on in zip(ML100K_GENRES, row, strict=False) if on), axis=1)
    out = pd.DataFrame({"title": frame["title"].fillna(""), "genre": genres.to_numpy()})
    out.index = id_tokens(frame["item_id"]).to_numpy()
    return out
