"""Plain training steps on Amazon Beauty with and without the padding's work.

    python benchmarks/packed_step.py [--models sasrec gru4rec lstm bert4rec] [--steps 30] [--threads 2]
                                     [--out benchmarks/results/packed_step.json]

For each model (defaults of `fedseqrec train`, full softmax over 12,101 items, batch 128, windows of 51 events):
the median step of `calculate_loss` on random batches (every position of the padded window scored: what DP-SGD
computes), of `packed_loss` on the same batches (cut to the longest user, items scored at target positions only)
and of `packed_loss` on `--batching length` batches. The epoch estimate is the median step times the number of
batches in an epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.models.batching import TrainingWindows, training_loader
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.optim import adamw
from fedseqrec.models.registry import build_model, model_config_for

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
BATCH = 128
WAYS = (("padded", False, False), ("packed", True, False), ("packed_length", True, True))  # (tag, packed, by length)


def median_step(model, windows: TrainingWindows, packed: bool, by_length: bool, steps: int) -> float:
    optimizer = adamw(model.parameters(), lr=1e-3, weight_decay=0.0)
    batches = iter(training_loader(windows, BATCH, seed=0, by_length=by_length))
    times = []
    for _ in range(steps):
        batch = windows.batch_of(next(batches))
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = model.packed_loss(batch) if packed else model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first steps allocate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beauty", default=str(DATA / "amazon-beauty" / "Beauty.txt"))
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "lstm", "bert4rec"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "packed_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load_dataset(DataConfig(data=args.beauty))
    windows = TrainingWindows(ds.sequences, ds.split, max_len=50, random_window=True)
    batches_per_epoch = -(-len(windows) // BATCH)
    rows = []
    for name in args.models:
        model = build_model(name, model_config_for(ds.sequences, ModelConfig(name=name)))
        row = {"model": name}
        for tag, packed, by_length in WAYS:
            seconds = median_step(model, windows, packed, by_length, args.steps)
            row[f"{tag}_ms"] = round(seconds * 1000, 1)
            row[f"{tag}_epoch_s"] = round(seconds * batches_per_epoch, 1)
        row["speedup"] = round(row["padded_ms"] / row["packed_length_ms"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "command": "python benchmarks/packed_step.py",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "batch": BATCH,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
