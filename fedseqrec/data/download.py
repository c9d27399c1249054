"""``fedseqrec data download``: the public datasets the tests and benchmarks use, fetched from where their authors
publish them and checked against the SHA-256 of the copies this project is measured on.

A file is written under its final name only once its checksum holds; a file already there with the right checksum
is kept. ``mirror``: a base URL serving the same files as ``MIRROR/DATASET/FILE`` (a local copy, a company mirror).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedseqrec.errors import UserError

CHUNK = 1 << 16
TIMEOUT = 60.0


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class PublicDataset:
    files: tuple[RemoteFile, ...]
    terms: str  # what the user agrees to by downloading it


RECBOLE = "https://raw.githubusercontent.com/RUCAIBox/RecBole/v1.2.1/recbole/dataset_example/ml-100k"
S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data"
DATASETS = {
    "ml-100k": PublicDataset(
        (
            RemoteFile(
                "ml-100k.inter",
                f"{RECBOLE}/ml-100k.inter",
                "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            ),
            RemoteFile(
                "ml-100k.user",
                f"{RECBOLE}/ml-100k.user",
                "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
            ),
            RemoteFile(
                "ml-100k.item",
                f"{RECBOLE}/ml-100k.item",
                "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            ),
        ),
        "MovieLens-100K (GroupLens), in RecBole's atomic files: research use, no redistribution",
    ),
    "amazon-beauty": PublicDataset(
        (
            RemoteFile(
                "Beauty.txt", f"{S3REC}/Beauty.txt", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"
            ),
        ),
        "Amazon product reviews (McAuley et al.), as preprocessed by the S3-Rec authors: research use",
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, expected: str) -> None:
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, partial.open("wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
        found = _sha256(partial)
        if found != expected:
            raise UserError(f"{url}: SHA-256 {found}, expected {expected}: not the published file; nothing written")
        partial.replace(target)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"{url}: could not download ({getattr(err, 'reason', err)}); nothing written") from err
    finally:
        partial.unlink(missing_ok=True)


def download(name: str, out: Path, mirror: str | None = None, say: Callable[[str], None] = print) -> Path:
    """Download dataset ``name`` into ``out/name``; the folder, ready for ``--data`` or ``FEDSEQREC_DATA_DIR=out``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    dataset, folder = DATASETS[name], Path(out) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create {folder} ({err.strerror})") from err
    say(f"{name}: {dataset.terms}")
    for remote in dataset.files:
        target = folder / remote.name
        if target.is_file() and _sha256(target) == remote.sha256:
            say(f"{target}: already there, checksum verified")
            continue
        url = f"{mirror.rstrip('/')}/{name}/{remote.name}" if mirror else remote.url
        say(f"downloading {url}")
        _fetch(url, target, remote.sha256)
        say(f"{target}: checksum verified")
    return folder
