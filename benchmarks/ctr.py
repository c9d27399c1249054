"""Ad click and conversion prediction on the `shop` log's ad slates (`--task ctr`): DIN-ESMM against the logistic
regression baseline, centralized, federated over 10 IID silos, and under federation-wide user-level DP.

    python benchmarks/ctr.py [--users 10000] [--rows central federated user-dp] [--rounds 30]
                             [--out benchmarks/results/ctr.json]

central: `fedseqrec train --task ctr` with lr (its preset: learning rate 0.01, no weight decay, 10 epochs) and
din-esmm (defaults, early stopping on validation click AUC); each user's last slate is the test slate. federated:
din-esmm, FedAvg over 10 IID silos, --rounds rounds. user-dp: the same under `--privacy user-level` at ε = 8 (δ from the
number of users). Figures: click AUC, GAUC, log-loss; conversion (purchase per impression) AUC, log-loss and the
calibration table by deciles of the prediction. Rows are merged into the JSON by row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from benchmark_report import machine

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.shop import ShopConfig
from fedseqrec.evaluation.ads import HEADS, PREFIX, calibration_groups, histogram
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.models.config import ModelConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "CTR-AUC",
    "CTR-GAUC",
    "CTR-LogLoss",
    "CTR-observed",
    "CTR-predicted",
    "CVR-AUC",
    "CVR-LogLoss",
    "CVR-observed",
    "CVR-predicted",
    "CVR-calibration",
)
FIT = {"lr": {"lr": 0.01, "weight_decay": 0.0, "epochs": 10}, "din-esmm": {}}
PRIVATE = {"user-dp": {"mechanism": "user-level", "epsilon": 8.0, "users_per_round": 1000}}


def figures(result: dict) -> dict:
    return {w: {k: round(float(result[w][k]), 4) for k in KEYS if k in result[w]} for w in ("valid", "test")}


def central(model: str, users: int, tmp: Path) -> dict:
    data = DataConfig(task="ctr", shop=ShopConfig(users=users))
    result = train_centralized(data, ModelConfig(name=model), TrainConfig(threads=1, **FIT[model]), tmp / model)
    return {
        "row": f"central-{model}",
        "model": model,
        **figures(result),
        "train_seconds": result["train_seconds"],
        "epochs": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "test_calibration": calibration_table(tmp / model, data),
    }


def calibration_table(folder: Path, data: DataConfig) -> dict:
    """The best model's test impressions in ten groups by prediction, for clicks and purchases: mean prediction,
    observed rate, and the relative gap a perfectly calibrated model would show by chance (one binomial standard
    deviation of the observed rate)."""
    ds = load_dataset(data)
    _, model = load_checkpoint(folder, ds.sequences)
    sums = evaluate_sums(model, ds.sequences, ds.split, "test").sums
    table = {}
    for name, _ in HEADS:
        pos, neg, predicted = (histogram(sums, f"{PREFIX}{name}:{kind}:") for kind in ("pos", "neg", "p"))
        groups = calibration_groups(pos, neg, predicted)
        for g in groups:
            expected = g["predicted"] * g["impressions"]
            g["chance_gap"] = round(math.sqrt(expected * (1 - g["predicted"])) / expected, 4) if expected else None
            g["predicted"], g["observed"] = round(g["predicted"], 5), round(g["observed"], 5)
        table[name] = groups
    return table


def federated(row: str, users: int, rounds: int, tmp: Path) -> dict:
    cfg = RunConfig.of(
        task="ctr",
        shop_users=users,
        model="din-esmm",
        partition="iid",
        clients=10,
        rounds=rounds,
        **PRIVATE.get(row, {}),
    )
    results, _ = simulate(cfg, out=tmp / row)
    out = {
        "row": row,
        "model": "din-esmm",
        "rounds": rounds,
        "best_round": results["best_round"],
        **figures(results),
        "seconds": results["seconds"],
    }
    if "privacy" in results:
        out["epsilon"] = results["privacy"].get("max_epsilon")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument(
        "--rows", nargs="+", default=["central", "federated"], choices=["central", "federated", *PRIVATE]
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ctr.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            found = (
                [central(m, args.users, Path(tmp)) for m in FIT]
                if row == "central"
                else [federated(row, args.users, args.rounds, Path(tmp))]
            )
            rows += found
            for r in found:
                print(json.dumps(r), flush=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    done = {r["row"] for r in rows}
    report["rows"] = [r for r in report["rows"] if r["row"] not in done] + rows
    report.update(machine=machine(), command="python benchmarks/ctr.py " + " ".join(sys.argv[1:]), users=args.users)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
