"""``fedseqrec data``: statistics, the prepared format, one folder per client."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedseqrec.cli.common import add_command, add_data_options, data_config
from fedseqrec.data.dataset import load_dataset
from fedseqrec.data.download import DATASETS, download
from fedseqrec.data.export import export_partitions
from fedseqrec.data.prepare import prepare
from fedseqrec.data.stats import dataset_stats, format_stats


def cmd_stats(args: argparse.Namespace) -> int:
    """print dataset statistics

    Users, items, interactions, events per type, sequence-length quantiles, what cleaning removed, the split and,
    with --partition, per-client counts.
    """
    stats = dataset_stats(load_dataset(data_config(args)))
    print(json.dumps(stats, indent=None if args.compact else 2) if args.json else format_stats(stats))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """write a processed dataset for fast loading

    Load, clean, split (and partition) --data once and write the prepared format (see fedseqrec/data/store.py)
    to --out. Later commands accept the folder as --data.
    """
    stats = prepare(data_config(args), Path(args.out))
    print(format_stats(stats))
    print(f"prepared dataset written to {Path(args.out).resolve()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """one data folder per client, for deployment

    Partition --data into clients and write one folder per client under --out (client-000, client-001, ...):
    that client's users only, in the prepared format, with the whole item vocabulary and the global split. Copy
    each folder to its client's host and start its SuperNode with --node-config "data-path=FOLDER
    ledger-path=FILE".
    """
    out = Path(args.out).resolve()
    summary = export_partitions(data_config(args), out)
    for client in summary["clients"]:
        print(
            f"{out / client['folder']}  client {client['name']}: {client['users']} users, "
            f"{client['interactions']} interactions"
        )
    print(f"{out / summary['server']}  the server: item vocabulary only (run with evaluation = federated)")
    print(f"{summary['num_partitions']} client folders written to {out} (index: {out / 'export.json'})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """download a public dataset, checked against its published checksum

    Fetch ml-100k (MovieLens-100K in RecBole's atomic files) or amazon-beauty (the papers' Beauty.txt) into
    --out/NAME, verify each file's SHA-256, and say how to point the project at it. Nothing is written under a
    file's name unless its checksum holds. Needs a network; --mirror takes the files from MIRROR/NAME/FILE instead.
    """
    folder = download(args.dataset, Path(args.out), args.mirror)
    print(f"done: --data {folder}  (tests and benchmarks: FEDSEQREC_DATA_DIR={folder.parent.resolve()})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    data = add_command(commands, "data", "inspect and prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    stats = add_command(data_commands, "stats", cmd_stats)
    add_data_options(stats, truncate=True, partition=True)
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    stats.add_argument("--compact", action="store_true", help="with --json: on one line")
    for name, handler, partition in (("prepare", cmd_prepare, True), ("export-partitions", cmd_export, "iid")):
        command = add_command(data_commands, name, handler)
        add_data_options(command, truncate=True, partition=partition)
        command.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    fetch = add_command(data_commands, "download", cmd_download)
    fetch.add_argument("dataset", choices=tuple(DATASETS), help="the dataset to download")
    fetch.add_argument("--out", default="data", metavar="DIR", help="where its folder goes (default: ./data)")
    fetch.add_argument("--mirror", default=None, metavar="URL", help="take the files from URL/DATASET/FILE")
