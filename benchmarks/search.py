"""Query-aware search ranking on the `shop` log's searches (`--task search`), against the query-agnostic model and
the text-match baseline; centralized, federated and under DP.

    python benchmarks/search.py [--users 3000] [--max-seconds 300] [--rows central federated dp]
                                [--rounds 30] [--out benchmarks/results/search.json]

central: `fedseqrec train --task search` with pop, text-match (the query alone), sasrec (the history alone) and
query-sasrec (both), at most --max-seconds of training each, early stopping on validation NDCG@10, full ranking of
each user's last search's item (validation: the search before it). federated: query-sasrec over 10 IID silos,
FedAvg, --rounds rounds. dp: the same federation under federation-wide user-level DP (`--privacy user-level`,
ε = 8) and with client-local DP-SGD (`--privacy dp-sgd`, ε = 8). Rows are merged into the JSON by (row, model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmark_report import machine

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig
from fedseqrec.data.shop import ShopConfig
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.config import ModelConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("NDCG@10", "HR@10", "MRR@10")
CENTRAL = ("pop", "text-match", "sasrec", "query-sasrec")
PRIVATE = {  # federation-wide user-level DP and client-local DP-SGD, both at ε = 8
    "user-dp": {"mechanism": "user-level", "epsilon": 8.0, "users_per_round": 600},
    "dp-sgd": {"mechanism": "dp-sgd", "epsilon": 8.0},
}


def figures(result: dict) -> dict:
    return {w: {k: round(result[w][k], 4) for k in KEYS} for w in ("valid", "test")}


def central(model: str, users: int, max_seconds: float, tmp: Path) -> dict:
    data = DataConfig(task="search", shop=ShopConfig(users=users))
    train = TrainConfig(max_seconds=max_seconds, threads=1)
    result = train_centralized(data, ModelConfig(name=model), train, tmp / model)
    return {
        "row": "central",
        "model": model,
        **figures(result),
        "train_seconds": result.get("train_seconds"),
        "epochs": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
    }


def federated(row: str, users: int, rounds: int, tmp: Path) -> dict:
    options = PRIVATE.get(row, {})
    cfg = RunConfig.of(
        task="search", shop_users=users, model="query-sasrec", partition="iid", clients=10, rounds=rounds, **options
    )
    results, _ = simulate(cfg, out=tmp / row)
    out = {
        "row": row,
        "model": "query-sasrec",
        "rounds": rounds,
        "best_round": results["best_round"],
        **figures(results),
        "seconds": results["seconds"],
    }
    if "privacy" in results:
        out["privacy"] = results["privacy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--models", nargs="+", default=list(CENTRAL))
    parser.add_argument(
        "--rows", nargs="+", default=["central", "federated"], choices=["central", "federated", *PRIVATE]
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            if row == "central":
                rows += [central(m, args.users, args.max_seconds, Path(tmp)) for m in args.models]
            else:
                rows.append(federated(row, args.users, args.rounds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    done = {(r["row"], r["model"]) for r in rows}
    report["rows"] = [r for r in report["rows"] if (r["row"], r["model"]) not in done] + rows
    report.update(machine=machine(), command="python benchmarks/search.py " + " ".join(sys.argv[1:]), users=args.users)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
