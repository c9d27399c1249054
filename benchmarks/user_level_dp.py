"""Federation-wide user-level DP-FedSGD on ml-100k, 10 IID silos, sasrec: test NDCG@10 against the popularity
baseline and the private popularity baseline at the same ε.

    python benchmarks/user_level_dp.py [--ml100k ../shared/data/ml-100k] [--runs e8r150 e1r60 …]
                                       [--out benchmarks/results/user_level_dp.json]
    python benchmarks/user_level_dp.py --collect DIR   # only read run folders DIR/TAG already written by it

Rows of runs not named in --runs are kept from the existing JSON.

Each run is `fedseqrec simulate` with the flags below (in a temporary folder, or DIR/TAG with --collect); the JSON
keeps every run's flags, ε (largest, re-checked by the report), noise multiplier, sampling rate, rounds, best round,
validation and test NDCG@10, and the popularity figures of the same data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "--partition",
    "iid",
    "--clients",
    "10",
    "--privacy",
    "user-level",
    "--strategy",
    "fedadam",
    "--eval-every",
    "10",
]
RUNS = {
    "u300-r60": ["--users-per-round", "300", "--epsilon", "8", "--rounds", "60", "--server-lr", "0.01"],
    "r150": ["--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01"],
    "lr03": ["--users-per-round", "300", "--epsilon", "8", "--rounds", "60", "--server-lr", "0.03"],
    "h32": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "60", "--server-lr", "0.01", "--hidden", "32",
        "--inner", "64",
    ],
    "q600": ["--users-per-round", "600", "--epsilon", "8", "--rounds", "60", "--server-lr", "0.01"],
    "c03": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "60", "--server-lr", "0.01",
        "--max-grad-norm", "0.3",
    ],
    "e8r150": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3",
    ],
    "e1r60": [
        "--users-per-round", "300", "--epsilon", "1", "--rounds", "60", "--server-lr", "0.01",
        "--max-grad-norm", "0.3",
    ],
    # fewer noised coordinates and other contributions, each against e8r150
    "pub10f": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3", "--public-users", "0.1", "--freeze", "items",
    ],
    "pub10": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3", "--public-users", "0.1",
    ],
    "steps5": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3", "--user-steps", "5", "--user-lr", "0.5",
    ],
    "perlayer": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3", "--clipping", "per-layer",
    ],
    "adaptive": [
        "--users-per-round", "300", "--epsilon", "8", "--rounds", "150", "--server-lr", "0.01",
        "--max-grad-norm", "0.3", "--clip-quantile", "0.5",
    ],
}  # fmt: skip # one run a line: its flags as typed


def row(tag: str, folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    report = json.loads((folder / "privacy_report.json").read_text())
    ledger = report["clients"][0]["ledger"][-1]  # the rounds (a first record may be the item selection)
    return {
        "run": tag,
        "flags": BASE + RUNS[tag],
        "epsilon": round(report["max_epsilon"], 4),
        "delta": report["delta"],
        "noise_multiplier": ledger["noise_multiplier"],
        "sample_rate": ledger["sample_rate"],
        "rounds": metrics["rounds_run"],
        "best_round": metrics["best_round"],
        "valid_NDCG@10": round(metrics["valid"]["NDCG@10"], 4),
        "test_NDCG@10": round(metrics["test"]["NDCG@10"], 4),
        "test_HR@10": round(metrics["test"]["HR@10"], 4),
        "popularity_valid_NDCG@10": round(metrics["popularity"]["valid"]["NDCG@10"], 4),
        "popularity_test_NDCG@10": round(metrics["popularity"]["test"]["NDCG@10"], 4),
        **({"initial_test_NDCG@10": round(metrics["initial"]["test"]["NDCG@10"], 4)} if "initial" in metrics else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--collect", default=None, metavar="DIR")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "user_level_dp.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag in args.runs:
            folder = Path(args.collect or tmp) / tag
            if args.collect is None:
                command = [sys.executable, "-m", "fedseqrec.cli", "simulate", "--data", args.ml100k, *BASE, *RUNS[tag]]
                subprocess.run([*command, "--out", str(folder)], check=True)
            rows.append(row(tag, folder))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    kept = json.loads(out.read_text())["rows"] if out.exists() else []  # earlier rows of runs not repeated now
    rows = [r for r in kept if r["run"] not in {row["run"] for row in rows}] + rows
    report = {"command": "python benchmarks/user_level_dp.py", "data": "ml-100k, 943 users, 10 IID silos", "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
