"""The cost of federation-wide user-level DP on Amazon Beauty's 12,101-item catalogue: the per-user clipped
contributions of 256 users (``fedseqrec.privacy.per_user``) against plain training on the same 256 users.

    python benchmarks/user_level_step.py [--models sasrec gru4rec bert4rec] [--repeats 3]
                                         [--out benchmarks/results/user_level_step.json]

Each configuration runs in a fresh process (so its peak RSS is its own): the real Beauty windows (length 50) of
256 users drawn at random, hidden 64, 2 blocks / layers. The plain step is what `fedseqrec train` does with the
Beauty preset: two batches of 128 users of like length, each forward, backward and AdamW on the packed loss (items
scored only where there is a target). The DP work is every user's own gradient (or K local steps), clipped, summed
(the silo's part of a round; the server's noise is one Gaussian draw per parameter and not timed); with a tied
table under full cross-entropy it takes the factored path (``fedseqrec.privacy.tied_table``). Median of --repeats
after one warm-up, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data")) / "amazon-beauty" / "Beauty.txt"
USERS, BATCH = 256, 128
CONFIGS = {
    "ce, tied": {"tie_items": True},
    # the same, each user's gradient of the whole table formed (the path every other model takes)
    "ce, tied, per-user table gradients": {"tie_items": True, "generic": True},
    "ce, tied, 2000 item rows": {"tie_items": True, "rows": 2000},
    "ce": {},
    "ce, items frozen": {"freeze": "items"},
    "sampled 256": {"loss": "sampled", "negatives": 256},
    "sampled 256, items frozen": {"loss": "sampled", "negatives": 256, "freeze": "items"},
}


def measure(model_name: str, config: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from fedseqrec.data.dataset import DataConfig, load_dataset
    from fedseqrec.models.batching import TrainingWindows
    from fedseqrec.models.config import ModelConfig
    from fedseqrec.models.optim import adamw
    from fedseqrec.models.registry import build_model, model_config_for
    from fedseqrec.privacy.per_user import Contribution, clipped_update_sum

    torch.set_num_threads(2)
    options = dict(CONFIGS[config])
    steps, rows = options.pop("steps", 1), options.pop("rows", None)
    if options.pop("generic", False):
        from fedseqrec.privacy import tied_table

        tied_table.applies = lambda *args: False
    ds = load_dataset(DataConfig(data=str(BEAUTY)))
    torch.manual_seed(0)
    model = build_model(model_name, model_config_for(ds.sequences, ModelConfig(name=model_name, **options)))
    windows = TrainingWindows(ds.sequences, ds.split, max_len=50)
    chosen = np.sort(np.random.default_rng(0).choice(len(windows), USERS, replace=False))
    by_length = chosen[np.argsort(windows.window_lengths()[chosen], kind="stable")]
    batches = [
        windows.batch_of([torch.stack(c) for c in zip(*(windows[int(i)] for i in part), strict=True)])
        for part in (by_length[:BATCH], by_length[BATCH:])
    ]
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    masks = {}
    if rows is not None:
        from fedseqrec.privacy.item_selection import item_counts, select_items
        from fedseqrec.privacy.user_level import item_row_masks

        users = np.arange(1, ds.sequences.n_users + 1)
        chosen_rows = select_items(item_counts(ds.sequences, ds.split, users), rows, 5.0).rows
        masks = item_row_masks(model, [int(r) for r in chosen_rows])

    def plain() -> None:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            model.packed_loss(batch).backward()
            optimizer.step()

    def private() -> None:
        clipped_update_sum(model, windows, chosen, Contribution(1.0, steps=steps, lr=0.1), masks)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings = {}
    for name, step in (("plain", plain), ("dp", private)):
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        timings[name] = statistics.median(times)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model": model_name,
        "config": config,
        "trained_parameters": trained,
        "plain_ms": round(timings["plain"] * 1000, 1),
        "dp_ms": round(timings["dp"] * 1000, 1),
        "ratio": round(timings["dp"] / timings["plain"], 2),
        "peak_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "bert4rec"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "user_level_step.json"))
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.repeats)))
        return
    rows = []
    for model_name in args.models:
        for config in CONFIGS:
            one = [sys.executable, __file__, "--one", model_name, config, "--repeats", str(args.repeats)]
            out = subprocess.run(one, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print(out, flush=True)
    report = {
        "command": "python benchmarks/user_level_step.py",
        "users": USERS,
        "plain_batch": BATCH,
        "data": "Amazon Beauty windows",
        "threads": 2,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
