"""Privacy–utility on ml-100k: 10 IID silos, FedAvg, sasrec, user-level DP-SGD at ε ∈ {1, 4, 8} (δ = 1e-5) and
the same run without DP.

    python benchmarks/privacy_utility.py [--ml100k ../shared/data/ml-100k] [--rounds 60] [--batch-size 32]
                                         [--epsilons 1 4 8] [--out benchmarks/results/privacy_utility.json]

Writes the JSON (test metrics of the best round, largest client ε, seconds) and the privacy–utility plot
(`fedseqrec report --compare` over the runs) beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedseqrec.data.tasks import task_of
from fedseqrec.federated.config import RunConfig
from fedseqrec.results.privacy_report import compare_runs
from fedseqrec.results.summary import format_round
from fedseqrec.server.loop import Progress
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "privacy_utility.json"))
    args = parser.parse_args()
    base = RunConfig.of(
        data=args.ml100k, partition="iid", clients=10, rounds=args.rounds, eval_every=5, batch_size=args.batch_size
    )
    runs = [("no-dp", base)] + [
        (f"eps{e:g}", base.replace(mechanism="dp-sgd", epsilon=e, delta=1e-5))
        for e in sorted(args.epsilons, reverse=True)
    ]
    rows, folders = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for tag, cfg in runs:
            start = time.perf_counter()
            task = task_of(cfg.data.task)
            progress = Progress(
                on_round=lambda r, t=tag, n=cfg.algorithm.rounds, k=task: print(
                    f"[{t}] {format_round(r, n, k)}", flush=True
                )
            )
            results, folder = simulate(cfg, out=Path(tmp) / tag, progress=progress)
            folders.append(folder.path)
            row = {
                "run": tag,
                "target_epsilon": cfg.privacy.epsilon,
                "largest_epsilon": results["privacy"]["max_epsilon"] if cfg.privacy.private else None,
                "test": {k: round(results["test"][k], 4) for k in ("NDCG@10", "HR@10", "MRR@10")},
                "valid_NDCG@10": round(results["valid"]["NDCG@10"], 4),
                "best_round": results["best_round"],
                "seconds": round(time.perf_counter() - start, 1),
                "seconds_per_round": round(results["seconds"] / max(1, results["rounds_run"]), 2),
            }
            if cfg.privacy.private:
                report = json.loads((folder.path / "privacy_report.json").read_text())
                row["noise_multipliers"] = sorted(
                    {r["noise_multiplier"] for c in report["clients"] for r in c["ledger"]}
                )
            print(json.dumps(row), flush=True)
            rows.append(row)
        plot = Path(args.out).with_suffix(".png")
        compare_runs(folders, plot)
    no_dp = rows[0]["test"]["NDCG@10"]
    for row in rows:
        row["ndcg_vs_no_dp"] = round(row["test"]["NDCG@10"] / no_dp, 3) if no_dp else None
    report = {
        "command": f"python benchmarks/privacy_utility.py --rounds {args.rounds} --batch-size {args.batch_size}",
        "setting": "ml-100k, 10 IID silos, FedAvg, sasrec, delta 1e-5, max-grad-norm 1.0, rdp accountant",
        "rows": rows,
        "plot": str(plot.relative_to(ROOT)) if plot.is_relative_to(ROOT) else str(plot),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out} and {plot}")


if __name__ == "__main__":
    main()
