"""The GPU figures of issue 30, in one short run (a lent GPU machine has minutes, not hours).

    python benchmarks/gpu.py [--device cuda] [--epochs 3] [--dp-users 2000] [--full-preset]
                             [--out benchmarks/results/gpu.json]

On Amazon Beauty with the SASRec preset of benchmarks/papers.py (full cross-entropy, tied items, batch 128):
- seconds of one training epoch (the mean of --epochs after one warm-up epoch), float32 and bf16 autocast;
- seconds of the validation pass (22,363 users ranked against 12,101 items, history removed);
- seconds of one user-level DP round of --dp-users users (their per-user clipped gradients, summed:
  `fedseqrec.privacy.per_user.clipped_update_sum`, the tied table's factored path);
- with --full-preset, the whole preset (36 epochs, validation each epoch) and its test NDCG@10.
Targets: an epoch ≤ 3 s and the whole preset ≤ 2 minutes on one H100; a DP round of 2,000 users ≤ 2 s. The card's
name is in the JSON. On a machine without a GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_report import write_report
from papers import PRESETS

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.batching import TrainingWindows, training_loader
from fedseqrec.models.config import DeviceConfig, ModelConfig
from fedseqrec.models.device import device_name, resolve_device
from fedseqrec.models.optim import adamw
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.models.training import train_epoch
from fedseqrec.privacy.per_user import Contribution, clipped_update_sum

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = str(
    Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data")) / "amazon-beauty" / "Beauty.txt"
)


def synchronised(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


SASREC_MODEL, SASREC_FIT = PRESETS["amazon"]["sasrec"]  # the preset benchmarks/papers.py runs on Beauty


def epoch_seconds(ds, device: torch.device, precision: str, epochs: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model("sasrec", model_config_for(ds.sequences, ModelConfig(**SASREC_MODEL))).to(device)
    windows = TrainingWindows(ds.sequences, ds.split, max_len=50, random_window=True)
    loader = training_loader(windows, SASREC_FIT["batch_size"], 0, True)
    optimizer = adamw(model.parameters(), lr=SASREC_FIT["lr"], weight_decay=0.0)
    times = []
    for epoch in range(epochs + 1):
        start = synchronised(device)
        train_epoch(model, loader, optimizer, windows.batch_of, packed=True, precision=precision)
        if epoch:  # the first one warms the kernels and the allocator up
            times.append(synchronised(device) - start)
    start = synchronised(device)
    evaluate(model, ds.sequences, ds.split, "valid", protocol="full-history-removed")
    return float(np.mean(times)), synchronised(device) - start


def dp_round_seconds(ds, device: torch.device, users: int) -> float:
    torch.manual_seed(0)
    model = build_model("sasrec", model_config_for(ds.sequences, ModelConfig(**SASREC_MODEL))).to(device)
    windows = TrainingWindows(ds.sequences, ds.split, max_len=50)
    chosen = np.sort(np.random.default_rng(0).choice(len(windows), users, replace=False))
    clipped_update_sum(model, windows, chosen[:256], Contribution(1.0))  # warm-up
    start = synchronised(device)
    clipped_update_sum(model, windows, chosen, Contribution(1.0))
    return synchronised(device) - start


def full_preset(device: str, tmp: Path) -> dict:
    train = TrainConfig(
        hardware=DeviceConfig(device), evaluation=EvaluationConfig(protocol="full-history-removed"), **SASREC_FIT
    )
    start = time.perf_counter()
    result = train_centralized(DataConfig(data=BEAUTY), ModelConfig(**SASREC_MODEL), train, tmp / "sasrec")
    return {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_seconds": result["train_seconds"],
        "test_NDCG@10": round(result["test"]["NDCG@10"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dp-users", type=int, default=2000)
    parser.add_argument("--full-preset", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    options = parser.parse_args()
    if options.device != "cpu" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: torch sees no CUDA GPU here; run it where one is (or --device cpu)", file=sys.stderr)
        sys.exit(2)
    device = resolve_device(options.device)
    ds = load_dataset(DataConfig(data=BEAUTY))
    row = {"device": device_name(device)}
    for precision in ("fp32", "bf16"):
        train, valid = epoch_seconds(ds, device, precision, options.epochs)
        row[f"epoch_seconds_{precision}"] = round(train, 2)
        row[f"validation_seconds_{precision}"] = round(valid, 2)
        print(json.dumps(row), flush=True)
    row["dp_round_seconds"] = round(dp_round_seconds(ds, device, options.dp_users), 2)
    row["dp_users"] = options.dp_users
    print(json.dumps(row), flush=True)
    if options.full_preset:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            row["full_preset"] = full_preset(options.device, Path(tmp))
    write_report(options.out, "gpu", "python benchmarks/gpu.py " + " ".join(sys.argv[1:]), [row])
    print(json.dumps(row))


if __name__ == "__main__":
    main()
