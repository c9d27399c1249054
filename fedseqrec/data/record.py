"""What a run records of its data, so that the run folder works from any working folder and never silently on
other data: the absolute path and a fingerprint (SHA-256 over the data's files, names and bytes).

``--data`` given to ``evaluate``, ``recommend``, ``serve`` or ``audit`` points a run at its data elsewhere (a copy,
another mount); data whose fingerprint differs from the recorded one is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedseqrec import __version__
from fedseqrec.data.formats import BUILTIN_DATASETS
from fedseqrec.errors import UserError

CHUNK = 1 << 20


def is_builtin(data: str) -> bool:
    """A generated dataset (its options, recorded with the run, make it again), not a path."""
    return data in BUILTIN_DATASETS and not Path(data).exists()


def absolute(data: str) -> str:
    """``--data`` as an absolute path (a built-in name as it is)."""
    return data if is_builtin(data) else str(Path(data).expanduser().resolve())


def fingerprint(data: str) -> str | None:
    """SHA-256 over the data's bytes (a folder: every file under it but hidden ones, with its relative name); None
    for a built-in dataset or a path that does not exist."""
    if is_builtin(data):
        return None
    root = Path(data).expanduser()
    if not root.exists():
        return None
    if root.is_file():
        files = [root]
    else:
        visible = (p for p in root.rglob("*") if not any(part.startswith(".") for part in p.relative_to(root).parts))
        files = sorted(p for p in visible if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        if path != root:  # a folder's layout counts; a single file's name does not (a copy may be renamed)
            digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def data_record(data: str) -> dict:
    """What a run folder records of ``--data``: where it was (absolute) and what it held."""
    return {"path": absolute(data), "fingerprint": fingerprint(data)}


def locate(recorded: str, record: dict | None, given: str | None, where: str) -> str:
    """The data a run folder's model goes with: ``given`` (``--data``), else the recorded absolute path, else the
    path as typed (a run folder of 0.1, which recorded no more). Whatever is found must hold the files the run
    recorded: other files under the same name (a different folder, or the data changed since) are refused."""
    if is_builtin(recorded) or (given is not None and is_builtin(given)):
        if given is not None and given != recorded:
            raise UserError(f"--data {given}: the run {where} was trained on {recorded}")
        return recorded
    expected = (record or {}).get("fingerprint")
    if given is not None:
        found = fingerprint(given)
        if expected is not None and found != expected:
            what = f"fingerprint {found}" if found else "no such file or folder"
            raise UserError(
                f"--data {given}: not the data the run {where} was trained on ({what}; recorded: {expected}); give "
                "the same files"
            )
        return absolute(given)
    candidates = [c for c in ((record or {}).get("path"), recorded) if c and Path(c).expanduser().exists()]
    if not candidates:
        raise UserError(
            f"{where}: the run's data {recorded} is not found from {Path.cwd()} (it was recorded relative to the "
            "folder the run was started in); give its location with --data PATH"
        )
    if expected is not None and fingerprint(candidates[0]) != expected:
        raise UserError(
            f"{where}: {candidates[0]} no longer holds the files the run was trained on (their fingerprint changed); "
            "give the data it was trained on with --data PATH"
        )
    return candidates[0]


SCHEMA = 2  # of a run folder's config.json; 1: before the data record (read all the same)


def run_folder_config(
    data: str, run_config: dict | None = None, config: dict | None = None, record: dict | None = None
) -> dict:
    """A run folder's ``config.json``: schema and package version, the data record (``record``: one kept from
    before, else made now), and the run's options — a federation's flat run config (``run_config``) or a
    centralized run's sections (``config``)."""
    options = {"run_config": run_config} if run_config is not None else dict(config or {})
    return {"schema": SCHEMA, "fedseqrec": __version__, "data_record": record or data_record(data), **options}
