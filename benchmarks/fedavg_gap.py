"""Where FedAvg over 10 IID silos loses against centralized training, and what each change does.

    python benchmarks/fedavg_gap.py ml-100k [--variants base batch-32 ...] [--seeds 0 1 2] [--central-seeds 0 1 2]
    python benchmarks/fedavg_gap.py beauty  [--rounds 20] ...
    [--out benchmarks/results/fedavg_gap_DATA.json]

Centralized `fedseqrec train` and `fedseqrec simulate --partition iid --clients 10` with the same model and
optimiser settings, on several seeds (seed = model initialisation, windows, batches and the partition), so that
the seed-to-seed spread of test NDCG@10 — evaluation and training noise — is measured next to the gap. Each
federated variant changes one thing against `base` (`VARIANTS`). ml-100k: the defaults of `fedseqrec train`,
100 rounds of one local epoch at batch 16, against training to early stopping. Beauty: the Beauty preset, as
many rounds as the centralized run has epochs. Rows are merged into the JSON by (kind, variant, seed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from benchmark_report import portable, spread
from papers import AMAZON_FIT, AMAZON_MODEL

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig
from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.config import ModelConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
KEYS = ("NDCG@10", "HR@10")
VARIANTS = {  # federated options changed against base, one at a time
    "base": {},
    "batch-32": {"batch_size": 32},
    # Beauty's silos hold 2,236 users: at the centralized batch of 128 a round is 18 local steps against an epoch's
    # 175, and FedAvg's progress goes by local steps; at 16 a round is 140 steps.
    "batch-16": {"batch_size": 16},
    "local-epochs-2": {"local_epochs": 2, "rounds_factor": 0.5},  # the same passes over the data
    # The same 140 local steps a round as batch-16, at 4× the batch: 4 passes over the silo's users a round.
    "batch-64-epochs-4": {"batch_size": 64, "local_epochs": 4, "rounds_factor": 0.25},
    # The same, each silo keeping its AdamW moments from one round to its next instead of restarting them.
    "batch-64-epochs-4-keep-optimizer": {
        "batch_size": 64,
        "local_epochs": 4,
        "rounds_factor": 0.25,
        "keep_optimizer": True,
    },
    "batch-64-epochs-4-keep-item-weighted": {
        "batch_size": 64,
        "local_epochs": 4,
        "rounds_factor": 0.25,
        "keep_optimizer": True,
        "item_weighted": True,
    },
    # Half the local passes a round (the same 140 steps at half the batch): less drift towards a silo's own users.
    "batch-32-epochs-2-keep-item-weighted": {
        "batch_size": 32,
        "local_epochs": 2,
        "rounds_factor": 0.5,
        "keep_optimizer": True,
        "item_weighted": True,
    },
    # The same with each round's local learning rate falling linearly over the run (round r of R: lr·(R−r+1)/R).
    "batch-32-epochs-2-keep-item-weighted-linear": {
        "batch_size": 32,
        "local_epochs": 2,
        "rounds_factor": 0.5,
        "keep_optimizer": True,
        "item_weighted": True,
        "lr_schedule": "linear",
    },
    # The same decay over 36 rounds (72 passes) instead of 24.
    "batch-32-epochs-2-keep-item-weighted-linear-36": {
        "batch_size": 32,
        "local_epochs": 2,
        "rounds_factor": 0.75,
        "keep_optimizer": True,
        "item_weighted": True,
        "lr_schedule": "linear",
    },
    "keep-optimizer": {"keep_optimizer": True},
    "item-weighted": {"item_weighted": True},
    "fedavgm": {"strategy": "fedavgm", "server_momentum": 0.5},
    "eval-every-1": {"eval_every": 1},
}


def settings(data: str) -> tuple[str, dict, dict, int, int]:
    """(path, model options, fit options, rounds, centralized epochs or 0 for early stopping)."""
    if data == "ml-100k":
        return str(DATA / "ml-100k"), {}, {"batch_size": 16}, 100, 0
    return str(DATA / "amazon-beauty" / "Beauty.txt"), dict(AMAZON_MODEL), dict(AMAZON_FIT), 20, 20


def central(data: str, seed: int, rounds: int, tmp: Path) -> dict:
    path, model, fit, default_rounds, epochs = settings(data)
    epochs = (rounds or default_rounds) if epochs else 0  # beauty: as many epochs as rounds
    protocol = "full" if data == "ml-100k" else "full-history-removed"
    fit = {k: v for k, v in fit.items() if k != "batch_size"}  # centralized keeps its own batch (128)
    train = TrainConfig(evaluation=EvaluationConfig(protocol=protocol), **fit, **({"epochs": epochs} if epochs else {}))
    start = time.perf_counter()
    result = train_centralized(DataConfig(data=path, seed=seed), ModelConfig(**model), train, tmp / "c")
    return central_row(result, seed, round(time.perf_counter() - start, 1))


def central_row(result: dict, seed: int, seconds: float) -> dict:
    return {
        "kind": "centralized",
        "variant": "base",
        "seed": seed,
        "test": {k: round(result["test"][k], 4) for k in KEYS},
        "valid": {k: round(result["valid"][k], 4) for k in KEYS},
        "best": result["best_epoch"],
        "passes": result["epochs_run"],
        "seconds": seconds,
    }


def central_from(folder: Path, seed: int) -> dict:
    """The centralized row from a `fedseqrec train` folder run with the same settings (e.g. the Beauty table's)."""
    result = json.loads((folder / "metrics.json").read_text())
    return {**central_row(result, seed, result["train_seconds"]), "from": str(folder)}


def federated(data: str, variant: str, seed: int, rounds: int, tmp: Path) -> dict:
    path, model, fit, default_rounds, _ = settings(data)
    change = dict(VARIANTS[variant])
    rounds = max(1, round((rounds or default_rounds) * change.pop("rounds_factor", 1.0)))
    protocol = "full" if data == "ml-100k" else "full-history-removed"
    every = 5 if data == "ml-100k" else 2  # Beauty converges in a few dozen passes
    options = {"partition": "iid", "clients": 10, "rounds": rounds, "eval_every": every, "protocol": protocol}
    cfg = RunConfig.of(data=path, seed=seed, **{**model, **fit, **options, **change})
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / "f")
    curve = [[r["round"], round(r["valid"]["NDCG@10"], 4)] for r in folder.rounds() if "valid" in r]
    return {
        "kind": "federated",
        "variant": variant,
        "seed": seed,
        "test": {k: round(results["test"][k], 4) for k in KEYS},
        "valid": {k: round(results["valid"][k], 4) for k in KEYS},
        "best": results["best_round"],
        "passes": rounds * cfg.fit.local_epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "valid_by_round": curve,
    }


def summary(rows: list[dict]) -> dict:
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(f"{row['kind']}/{row['variant']}", []).append(row["test"]["NDCG@10"])
    out = {name: {"seeds": len(v), **spread(v)} for name, v in groups.items()}
    best = max((e["mean"] for name, e in out.items() if name.startswith("centralized/")), default=None)
    for name, entry in out.items():
        if not name.startswith("federated/"):
            continue
        # against centralized training with the same schedule, and against the best centralized figure
        linear = VARIANTS.get(name.split("/", 1)[1], {}).get("lr_schedule") == "linear"
        reference = out.get("centralized/lr-schedule-linear" if linear else "centralized/base", {}).get("mean")
        if reference:
            entry["ratio_to_centralized"] = round(entry["mean"] / reference, 3)
        if best:
            entry["ratio_to_best_centralized"] = round(entry["mean"] / best, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=("ml-100k", "beauty"))
    parser.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--central-seeds", nargs="*", type=int, default=[])
    parser.add_argument("--central-from", type=Path, default=None, help="a train folder: its seed-0 centralized row")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"fedavg_gap_{args.data}.json"
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    rows = report["rows"]

    def keep(row: dict) -> None:
        key = (row["kind"], row["variant"], row["seed"])
        rows[:] = [r for r in rows if (r["kind"], r["variant"], r["seed"]) != key]
        rows.append(row)
        report.update(
            machine={"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
            summary=summary(rows),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(portable(report, DATA), indent=2) + "\n")
        print(json.dumps(row), flush=True)

    if args.central_from is not None:
        keep(central_from(args.central_from, 0))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.central_seeds:
            keep(central(args.data, seed, args.rounds, Path(tmp) / f"c{seed}"))
        for variant in args.variants:
            for seed in args.seeds:
                keep(federated(args.data, variant, seed, args.rounds, Path(tmp) / f"{variant}{seed}"))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
