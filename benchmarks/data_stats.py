"""Time the data layer: `fedseqrec data stats` on the shop data (1k, 10k and 100k users) and on ml-100k, and
loading a prepared folder.

    python benchmarks/data_stats.py [--ml100k ../shared/data/ml-100k] [--out benchmarks/results/data_stats.json]

Each figure is the median wall time of several runs of the real command in a fresh process (so it includes
Python start-up and imports, as a user sees it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedseqrec.cli", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_stats.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"python": platform.python_version(), "machine": platform.machine(), "repeats": args.repeats}
    results["stats_shop_default_s"] = timed(["data", "stats", "--json"], args.repeats)
    results["stats_shop_10k_users_s"] = timed(["data", "stats", "--json", "--shop-users", "10000"], args.repeats)
    results["stats_shop_100k_users_s"] = timed(["data", "stats", "--json", "--shop-users", "100000"], args.repeats)
    results["stats_ml100k_s"] = timed(["data", "stats", "--json", "--data", args.ml100k], args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = str(Path(tmp) / "ml100k")
        results["prepare_ml100k_s"] = timed(["data", "prepare", "--data", args.ml100k, "--out", prepared], 1)
        results["stats_ml100k_prepared_s"] = timed(["data", "stats", "--json", "--data", prepared], args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
