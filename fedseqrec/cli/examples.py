"""The examples every ``--help`` ends with, by command (a test checks that each command has some)."""

from __future__ import annotations

import argparse

ML = "data/ml-100k"  # where `fedseqrec data download ml-100k` puts it
EXAMPLES = {
    "fedseqrec": [
        "fedseqrec data download ml-100k",
        f"fedseqrec train --data {ML} --model sasrec --out runs/sasrec",
        f"fedseqrec simulate --data {ML} --clients 10 --rounds 20 --privacy dp-sgd --epsilon 8 --out runs/dp",
        "fedseqrec serve runs/sasrec --port 8000",
    ],
    "fedseqrec data": ["fedseqrec data stats --data shop", "fedseqrec data download amazon-beauty --out data"],
    "fedseqrec data stats": ["fedseqrec data stats --data shop", f"fedseqrec data stats --data {ML} --k-core 5 --json"],
    "fedseqrec data prepare": [f"fedseqrec data prepare --data {ML} --out prepared/ml100k"],
    "fedseqrec data export-partitions": [f"fedseqrec data export-partitions --data {ML} --clients 10 --out clients"],
    "fedseqrec data download": ["fedseqrec data download ml-100k --out data", "FEDSEQREC_DATA_DIR=data pytest"],
    "fedseqrec train": [
        "fedseqrec train --data shop --epochs 5 --out runs/shop",
        f"fedseqrec train --data {ML} --model gru4rec --lr 0.001 --out runs/gru",
        f"fedseqrec train --data {ML} --model cooc --cooc-epsilon 8 --cooc-items 400 --out runs/private-cooc",
    ],
    "fedseqrec evaluate": [
        "fedseqrec evaluate --checkpoint runs/shop",
        "fedseqrec evaluate --checkpoint runs/ml --data /mnt/copy/ml-100k --json",
    ],
    "fedseqrec simulate": [
        "fedseqrec simulate --clients 5 --rounds 10 --out runs/fed",
        f"fedseqrec simulate --data {ML} --clients 10 --privacy dp-sgd --epsilon 8 --out runs/dp",
        f"fedseqrec simulate --data {ML} --clients 10 --privacy user-level --users-per-round 300 --epsilon 8",
        "fedseqrec simulate --resume runs/fed --rounds 20",
    ],
    "fedseqrec deploy": ["fedseqrec deploy local --clients 3 --rounds 5 --out runs/deployed"],
    "fedseqrec deploy local": [
        "fedseqrec deploy local --clients 3 --rounds 5 --out runs/deployed",
        "fedseqrec deploy local --clients 3 --privacy dp-sgd --noise-multiplier 1.0 --insecure",
    ],
    "fedseqrec deploy app": ["fedseqrec deploy app app/ --data /srv/ml-100k --clients 10 --out /srv/runs/fed"],
    "fedseqrec deploy credentials": ["fedseqrec deploy credentials --out certs --hosts superlink.example --nodes 3"],
    "fedseqrec report": [
        "fedseqrec report runs/dp --reference runs/fed",
        "fedseqrec report --compare runs/dp-eps1 runs/dp-eps8 runs/fed --out curve.png",
    ],
    "fedseqrec audit": ["fedseqrec audit runs/audited", "fedseqrec audit runs/audited --data /mnt/copy/ml-100k"],
    "fedseqrec recommend": [
        "fedseqrec recommend runs/shop --user 17 --k 5",
        "fedseqrec recommend runs/shop --history i3 i9 i12 --explain",
        "fedseqrec recommend runs/shop --input histories.jsonl --output top10.jsonl",
    ],
    "fedseqrec tune": [
        f"fedseqrec tune train --data {ML} --model sasrec --trials 50 --out runs/tune-sasrec",
        f"fedseqrec tune simulate --data {ML} --clients 10 --privacy user-level --epsilon 8 --trials 10",
    ],
    "fedseqrec tune train": [
        f"fedseqrec tune train --data {ML} --trials 50 --search lr --search dropout=0.1:0.5 --out runs/tune",
        f"fedseqrec tune train --data {ML} --sampler grid --search hidden --search layers --trials 9",
        f"fedseqrec tune train --data {ML} --storage postgresql://db/tuning --study-name sasrec --jobs 2",
    ],
    "fedseqrec tune simulate": [
        f"fedseqrec tune simulate --data {ML} --clients 10 --rounds 20 --trials 20 --out runs/tune-fed",
        f"fedseqrec tune simulate --data {ML} --clients 10 --privacy user-level --users-per-round 300 --epsilon 8 "
        "--strategy fedadam --trials 10 --search server-lr --search max-grad-norm",
    ],
    "fedseqrec serve": [
        "fedseqrec serve runs/shop --port 8000",
        'curl -s localhost:8000/recommend -H \'content-type: application/json\' -d \'{"history": ["i3", "i9"]}\'',
    ],
}


def examples_of(commands: argparse._SubParsersAction | None, name: str) -> str:
    """The epilog of command ``name`` (under ``commands``, the group it is registered in)."""
    prog = f"{commands._prog_prefix} {name}" if commands is not None else name  # argparse keeps the path there
    lines = EXAMPLES.get(prog)
    if not lines:
        raise KeyError(f"{prog}: no examples for its --help (fedseqrec/cli/examples.py)")
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
