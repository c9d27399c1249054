"""More signal per noisy step? Federation-wide user-level DP at ε = 8 with one thing changed at a time — the cohort
size, the server optimiser, the item rows that train, the model's width, local steps — on ml-100k or Beauty.

    python benchmarks/user_level_signal.py ml-100k [--variants base every-user ...] [--out FILE]
    python benchmarks/user_level_signal.py beauty  [--variants ...]

The mechanism of `--privacy user-level` run in one process, without Flower, so that many variants fit in minutes:
each step samples every user with rate q (Poisson), sums their clipped contributions with
``fedseqrec.privacy.per_user.clipped_update_sum`` (the code the silos run), adds N(0, σ²C²) once (only to the rows
that train, with --item-rows), divides by the expected cohort qN and hands the result to the server optimiser —
torch's Adam (bias-corrected, unlike Flower's FedAdam) or SGD with momentum. σ is calibrated by the same
accountant for ε = 8 over the variant's steps, the item selection's release included. The figure is the last
step's model (no choice among steps), test NDCG@10 on every test user, with the standard-error bound √(NDCG/n);
the JSON keeps each variant's settings and its per-step signal-to-noise ratio at the start (the norm of the mean
clipped contribution over the norm of the noise). Writes benchmarks/results/user_level_signal_{dataset}.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
DATASETS = {
    "ml-100k": {"data": str(DATA / "ml-100k"), "protocol": "full", "cohort": 300, "steps": 150, "rows": 800},
    "beauty": {
        "data": str(DATA / "amazon-beauty" / "Beauty.txt"),
        "protocol": "full-history-removed",
        "cohort": 2000,
        "steps": 60,
        "rows": 2000,
    },
}
BASE = {
    "optimizer": "adam",
    "lr": 0.01,
    "clip": 0.3,
    "cohort": None,
    "rows": None,
    "hidden": 64,
    "user_steps": 1,
    "noise": True,
}
VARIANTS = {  # each against base: what it changes
    "base": {},
    "every-user": {"cohort": "all"},  # q = 1: every user every step
    "item-rows": {"rows": "preset"},  # the private selection of --item-rows
    "hidden-32": {"hidden": 32},  # half the coordinates
    "sgd-momentum": {"optimizer": "sgd", "lr": 10.0},  # SGD with momentum 0.9 (Flower's FedAvgM)
    "lr-0.003": {"lr": 0.003},
    "local-steps-5": {"user_steps": 5},  # user-level DP-FedAvg: 5 SGD steps of rate 0.1 per user
    "no-noise": {"noise": False},  # NOT private (σ = 0, still clipped): what the same steps give without the noise
}
EPSILON = 8.0


def run_variant(dataset: str, name: str, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from fedseqrec.evaluation.evaluator import evaluate
    from fedseqrec.federated.config import RunConfig
    from fedseqrec.federated.task import build_global_model, cached_dataset
    from fedseqrec.models.batching import TrainingWindows
    from fedseqrec.privacy.accounting import calibrate_noise_after
    from fedseqrec.privacy.config import default_delta
    from fedseqrec.privacy.item_selection import item_counts, select_items
    from fedseqrec.privacy.per_user import Contribution, clipped_update_sum
    from fedseqrec.privacy.user_level import SELECTION_NOISE_TIMES_EPSILON, item_row_masks

    setting, options = DATASETS[dataset], {**BASE, **VARIANTS[name]}
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    cfg = RunConfig.of(
        data=setting["data"], protocol=setting["protocol"], tie_items=True, clients=10, hidden=options["hidden"]
    )
    ds = cached_dataset(cfg.data)
    data, split, users = ds.sequences, ds.split, ds.sequences.n_users
    model = build_global_model(data, cfg.model)
    windows = TrainingWindows(data, split, max_len=cfg.model.max_len)
    cohort = users if options["cohort"] == "all" else setting["cohort"]
    rate, delta, steps = min(1.0, cohort / users), default_delta(users), setting["steps"]
    prior, masks = (), {}
    if options["rows"] is not None:
        noise = SELECTION_NOISE_TIMES_EPSILON / EPSILON
        chosen = select_items(item_counts(data, split, np.arange(1, users + 1)), setting["rows"], noise).rows
        masks = item_row_masks(model, [int(r) for r in chosen])
        prior = ((noise, 1.0, 1),)
    sigma = calibrate_noise_after(prior, EPSILON, delta, rate, steps, "rdp") if options["noise"] else 0.0
    params = dict(model.named_parameters())
    if options["optimizer"] == "adam":
        optimizer = torch.optim.Adam(params.values(), lr=options["lr"])
    else:
        optimizer = torch.optim.SGD(params.values(), lr=options["lr"], momentum=0.9)
    rule = Contribution(options["clip"], options["user_steps"], 0.1)
    rng = np.random.default_rng(seed)
    started, signal_to_noise = time.perf_counter(), None
    for step in range(steps):
        sampled = np.flatnonzero(rng.random(len(windows)) < rate)
        total, _, _ = clipped_update_sum(model, windows, sampled, rule, masks)
        optimizer.zero_grad()
        noise_norm = 0.0
        for key, weight in params.items():
            noise = torch.randn_like(total[key]) * sigma * options["clip"]
            if key in masks:
                noise = noise * masks[key].reshape(-1, *([1] * (noise.dim() - 1)))
            noise_norm += float((noise**2).sum())
            weight.grad = (total[key] + noise) / (rate * users)
        if step == 0:
            signal = math.sqrt(sum(float((t**2).sum()) for t in total.values()))
            signal_to_noise = signal / math.sqrt(noise_norm) if noise_norm else math.inf
        optimizer.step()
    model.eval()
    test = evaluate(model, data, split, "test", max_len=cfg.model.max_len, protocol=setting["protocol"])
    ndcg = test["NDCG@10"]
    return {
        "variant": name,
        "changes": VARIANTS[name],
        "settings": {**options, "cohort": cohort, "steps": steps, "rows": setting["rows"] if masks else None},
        "noise_multiplier": sigma,
        "sample_rate": rate,
        "delta": delta,
        "first_step_signal_to_noise": round(signal_to_noise, 4) if math.isfinite(signal_to_noise) else None,
        "test_NDCG@10": round(ndcg, 4),
        "standard_error_bound": round(math.sqrt(ndcg / users), 4),
        "test_HR@10": round(test["HR@10"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"user_level_signal_{args.dataset}.json")
    kept = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = []
    for name in args.variants:
        rows.append(run_variant(args.dataset, name))
        print(json.dumps(rows[-1]), flush=True)
    rows = [r for r in kept if r["variant"] not in args.variants] + rows
    report = {
        "command": f"python benchmarks/user_level_signal.py {args.dataset}",
        "epsilon": EPSILON,
        "threads": 2,
        "rows": sorted(rows, key=lambda r: list(VARIANTS).index(r["variant"])),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
