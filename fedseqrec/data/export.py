"""``fedseqrec data export-partitions``: one prepared-format folder per client, to copy to that client's host.

    DIR/export.json       what was exported: source, options, partition, clients and their folders
    DIR/client-000/ ...   client 0's users only (renumbered from 1), with the whole item, event-type and query
                          vocabulary (so its model has the global model's shape) and the global split positions;
                          its manifest's ``client`` block names the client (id, name, number of clients, partition)
    DIR/server/           the vocabulary without any user: what a ServerApp that evaluates federatedly needs

A deployed SuperNode points ``data-path`` at its folder; nobody else's events are in it. The ServerApp's run
config may point ``data`` at ``server/`` (with ``evaluation = "federated"``), so the server holds no user's events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseqrec import __version__
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.sequences import SequenceData, Vocabulary
from fedseqrec.data.splits import Split
from fedseqrec.data.store import load_manifest, load_prepared, write_atomically, write_prepared
from fedseqrec.errors import DataError, UserError

EXPORT_MANIFEST = "export.json"
SERVER_FOLDER = "server"


def client_folder_name(client: int) -> str:
    return f"client-{client:03d}"


def is_export(path: Path) -> bool:
    return (path / EXPORT_MANIFEST).is_file()


def subset(data: SequenceData, split: Split, users: np.ndarray) -> tuple[SequenceData, Split]:
    """``users`` (ids, in this order) renumbered 1..len(users); items, events and queries keep their ids."""
    users = np.asarray(users, dtype=np.int64)
    lengths = data.lengths[users]
    offsets = np.concatenate([[0, 0], np.cumsum(lengths)]).astype(np.int64)
    events = np.concatenate([np.arange(data.offsets[u], data.offsets[u + 1]) for u in users]) if len(users) else []
    events = np.asarray(events, dtype=np.int64)
    keep = np.concatenate([[0], users])
    features = data.user_features.loc[users].reset_index(drop=True)
    features.index = features.index + 1
    sub = SequenceData(
        vocab=Vocabulary(data.vocab.users[keep], data.vocab.items, data.vocab.events, data.vocab.queries),
        offsets=offsets,
        items=data.items[events],
        events=data.events[events],
        timestamps=data.timestamps[events],
        queries=data.queries[events],
        user_features=features,
        item_features=data.item_features,
    )
    sub_split = Split(split.name, split.train_end[keep], split.valid_pos[keep], split.test_pos[keep], split.params)
    return sub, sub_split


def export_partitions(cfg: DataConfig, out: Path) -> dict:
    """Write every client's folder under ``out`` (atomically: all of them or nothing) and return the summary."""
    if cfg.partition is None:
        raise UserError("export-partitions needs --partition (per-user, iid, dirichlet or attribute)")
    ds = load_dataset(cfg)
    partition = ds.partition
    clients = partition.clients()
    summary = {
        "fedseqrec_version": __version__,
        "source": ds.source,
        "options": ds.options,
        "partition_request": cfg.partition_params(),
        "split": {"name": ds.split.name, "params": ds.split.params},
        "items": ds.sequences.n_items,
        "num_partitions": len(clients),
        "clients": [],
        "server": SERVER_FOLDER,
    }
    for client, users in enumerate(clients):
        summary["clients"].append(
            {
                "id": client,
                "name": partition.name(client),
                "folder": client_folder_name(client),
                "users": len(users),
                "interactions": int(ds.sequences.lengths[users].sum()),
            }
        )

    def write_part(target: Path, users: np.ndarray, role: str, about: dict) -> None:
        data, split = subset(ds.sequences, ds.split, users)
        counts = {"users": len(users), "items": data.n_items, "interactions": data.n_interactions}
        manifest = {
            "fedseqrec_version": __version__,
            "source": ds.source,
            "source_format": ds.format,
            "options": ds.options,
            "partition_request": cfg.partition_params(),
            role: about,
            "counts": counts,
        }
        target.mkdir()
        write_prepared(target, data, split, None, manifest, {role: about, **counts})

    def write(folder: Path) -> None:
        for entry, users in zip(summary["clients"], clients, strict=True):
            about = {**entry, "num_partitions": len(clients), "partition": partition.scheme}
            write_part(folder / entry["folder"], users, "client", about)
        about = {"num_partitions": len(clients), "note": "vocabulary only: no user's events"}
        write_part(folder / SERVER_FOLDER, np.empty(0, dtype=np.int64), "server", about)
        (folder / EXPORT_MANIFEST).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    write_atomically(out, write, is_export, "a fedseqrec partition export")
    return summary


@dataclass
class ClientExport:
    """A client's exported folder, loaded: its id in the federation and its users' sequences."""

    client: int
    num_partitions: int
    sequences: SequenceData
    split: Split
    manifest: dict


def exported_client(path: Path) -> dict | None:
    """The ``client`` block of a client folder's manifest; None for anything else."""
    try:
        return load_manifest(path).get("client") if path.is_dir() else None
    except DataError:
        return None


def load_client_export(path: Path) -> ClientExport:
    manifest, data, split, _ = load_prepared(path)
    client = manifest.get("client")
    if not client:
        raise DataError(f"{path}: a prepared dataset, not a client folder from `fedseqrec data export-partitions`")
    return ClientExport(int(client["id"]), int(client["num_partitions"]), data, split, manifest)
