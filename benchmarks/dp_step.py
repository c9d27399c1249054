"""DP-SGD step time and memory against a plain step, per model and Opacus grad-sample mode.

    python benchmarks/dp_step.py [--models sasrec gru4rec] [--steps 20] [--out benchmarks/results/dp_step.json]

Setting of the issue: 5,000 items, sequences of length 50, batch 64, hidden 64 (2 blocks / layers). A step is
forward, backward (two for ghost clipping) and the optimizer step (AdamW), on fixed full batches; the DP step
includes clipping and noise (noise multiplier 1.0). The median over --steps steps after 3 warm-up steps is
reported, with the peak RSS growth of the process during the steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import torch

from fedseqrec.models.base import SeqBatch
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.optim import adamw
from fedseqrec.models.registry import build_model
from fedseqrec.privacy.compat import dp_compatible
from fedseqrec.privacy.dpsgd import make_private

ROOT = Path(__file__).resolve().parents[1]
ITEMS, LENGTH, BATCH, HIDDEN = 5000, 50, 64, 64


def batch() -> SeqBatch:
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, ITEMS + 1, (BATCH, LENGTH + 1), generator=g)
    events = torch.randint(1, 4, (BATCH, LENGTH + 1), generator=g)
    gaps = torch.randint(1, 10, (BATCH, LENGTH + 1), generator=g)
    return SeqBatch(items=items, events=events, gaps=gaps, lengths=torch.full((BATCH,), LENGTH + 1))


def timed_steps(step, steps: int) -> tuple[float, float]:
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return statistics.median(times), grown / 1024


def plain(name: str, cfg: ModelConfig, data: SeqBatch, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, cfg).train()
    optimizer = adamw(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(data).backward()
        optimizer.step()

    seconds, mib = timed_steps(step, steps)
    return {"seconds": seconds, "rss_growth_mib": mib}


def private(name: str, cfg: ModelConfig, data: SeqBatch, steps: int, mode: str) -> dict:
    torch.manual_seed(0)
    model = dp_compatible(build_model(name, cfg)).train()
    optimizer = adamw(model.parameters(), lr=1e-3, weight_decay=0.01)
    dataset = torch.utils.data.TensorDataset(data.items, data.events, data.gaps, data.lengths)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    # fixed full batches (no Poisson sampling): the same work as the plain step
    made = make_private(model, optimizer, loader, 1.0, 1.0, mode, cfg.label_smoothing, poisson=False)
    criterion, optimizer = made.criterion, made.optimizer

    def step():
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.calculate_loss(data, criterion).backward()
        optimizer.step()

    seconds, mib = timed_steps(step, steps)
    return {"seconds": seconds, "rss_growth_mib": mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dp_step.json"))
    args = parser.parse_args()
    data = batch()
    rows = []
    for name in args.models:
        cfg = ModelConfig(n_items=ITEMS, n_events=3, hidden=HIDDEN, layers=2, heads=2, inner=256, max_len=LENGTH)
        base = plain(name, cfg, data, args.steps)
        modes = ("hooks", "ghost") if name in ("sasrec", "bert4rec") else ("hooks",)
        for mode in modes:
            dp = private(name, cfg, data, args.steps, mode)
            row = {
                "model": name,
                "mode": mode,
                "plain_ms": round(base["seconds"] * 1000, 1),
                "dp_ms": round(dp["seconds"] * 1000, 1),
                "ratio": round(dp["seconds"] / base["seconds"], 2),
                "plain_rss_growth_mib": round(base["rss_growth_mib"], 1),
                "dp_rss_growth_mib": round(dp["rss_growth_mib"], 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "command": "python benchmarks/dp_step.py",
        "setting": {
            "items": ITEMS,
            "length": LENGTH,
            "batch": BATCH,
            "hidden": HIDDEN,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
