"""The prepared-dataset folder written by ``fedseqrec data prepare`` (format version 1).

    manifest.json    format name and version, source, options, counts, split and partition parameters
    sequences.npz    offsets (int64), items (int32), events (int16), timestamps (float64), queries (int32)
    split.npz        train_end, valid_pos, test_pos (int64, by user id)
    partition.npz    client_of_user (int64, by user id; only when a partition was asked for)
    users.tsv        user_id, token (original id), user features
    items.tsv        item_id, token, item features
    events.tsv       event_id, token;    queries.tsv    query_id, token
    stats.json       what ``fedseqrec data stats --json`` prints for this data

Ids are contiguous from 1; id 0 is padding (``[PAD]``). Writes go to a temporary sibling folder that is
renamed into place, so a reader never sees half a dataset, and the same input gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fedseqrec.data.partition import Partition
from fedseqrec.data.sequences import SequenceData, Vocabulary
from fedseqrec.data.splits import Split
from fedseqrec.errors import DataError, UserError

FORMAT_NAME = "fedseqrec-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def is_prepared(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def write_atomically(
    out: Path,
    write: Callable[[Path], None],
    replaceable: Callable[[Path], bool] = is_prepared,
    what: str = "a fedseqrec prepared dataset",
) -> None:
    """Run ``write(tmp_dir)`` and move the result to ``out``; ``out`` is untouched if ``write`` fails. An existing
    ``out`` is replaced only if it is empty or ``replaceable`` (something this command wrote before)."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not replaceable(out):
        raise UserError(f"--out {out}: folder is not empty and is not {what}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new folder
        write(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_prepared(
    out: Path, data: SequenceData, split: Split, partition: Partition | None, manifest: dict, stats: dict
) -> None:
    write_atomically(out, lambda folder: write_prepared(folder, data, split, partition, manifest, stats))


def write_prepared(
    folder: Path, data: SequenceData, split: Split, partition: Partition | None, manifest: dict, stats: dict
) -> None:
    """The prepared format into an existing, empty ``folder`` (callers make it atomic)."""
    _save_npz(
        folder / "sequences.npz",
        offsets=data.offsets,
        items=data.items,
        events=data.events,
        timestamps=data.timestamps,
        queries=data.queries,
    )
    _save_npz(folder / "split.npz", train_end=split.train_end, valid_pos=split.valid_pos, test_pos=split.test_pos)
    if partition is not None:
        _save_npz(folder / "partition.npz", client_of_user=partition.client_of_user)
    _save_vocab(folder / "users.tsv", "user_id", data.vocab.users, data.user_features)
    _save_vocab(folder / "items.tsv", "item_id", data.vocab.items, data.item_features)
    _save_vocab(folder / "events.tsv", "event_id", data.vocab.events, None)
    _save_vocab(folder / "queries.tsv", "query_id", data.vocab.queries, None)
    full = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        **manifest,
        "split": {"name": split.name, "params": split.params},
        "partition": None
        if partition is None
        else {"scheme": partition.scheme, "params": partition.params, "client_names": partition.client_names},
    }
    _write_json(folder / MANIFEST, full)
    _write_json(folder / "stats.json", stats)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    # np.savez stamps zip members with the current time; identical output needs a fixed stamp.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def _save_vocab(path: Path, id_name: str, tokens: np.ndarray, features: pd.DataFrame | None) -> None:
    table = pd.DataFrame({id_name: np.arange(len(tokens)), "token": tokens})
    if features is not None and len(features.columns):
        padded = features.reindex(range(len(tokens))).fillna("")
        table = pd.concat([table, padded.reset_index(drop=True)], axis=1)
    table.to_csv(path, sep="\t", index=False, lineterminator="\n")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path / MANIFEST}: not a readable manifest ({err})") from err
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path / MANIFEST}: not a fedseqrec prepared dataset (format {manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{path / MANIFEST}: prepared-format version {manifest.get('version')} is not supported "
            f"(this fedseqrec reads version {FORMAT_VERSION}); prepare the data again"
        )
    return manifest


def load_prepared(path: Path) -> tuple[dict, SequenceData, Split, Partition | None]:
    manifest = load_manifest(path)
    try:
        with np.load(path / "sequences.npz", allow_pickle=False) as seq, np.load(path / "split.npz") as spl:
            arrays = {k: seq[k] for k in seq.files}
            split = Split(
                manifest["split"]["name"],
                spl["train_end"],
                spl["valid_pos"],
                spl["test_pos"],
                manifest["split"]["params"],
            )
        users, user_features = _load_vocab(path / "users.tsv")
        items, item_features = _load_vocab(path / "items.tsv")
        events, _ = _load_vocab(path / "events.tsv")
        queries, _ = _load_vocab(path / "queries.tsv")
        partition = None
        if manifest.get("partition"):
            with np.load(path / "partition.npz") as part:
                info = manifest["partition"]
                partition = Partition(info["scheme"], part["client_of_user"], info["params"], info["client_names"])
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{path}: damaged prepared dataset ({type(err).__name__}: {err}); prepare it again") from err
    data = SequenceData(
        vocab=Vocabulary(users=users, items=items, events=events, queries=queries),
        user_features=user_features,
        item_features=item_features,
        **arrays,
    )
    return manifest, data, split, partition


def _load_vocab(path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    tokens = table["token"].to_numpy(dtype=object)
    features = table.drop(columns=[table.columns[0], "token"]).iloc[1:]
    features.index = pd.RangeIndex(1, len(tokens))
    return tokens, features
