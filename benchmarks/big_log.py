"""Loading a big event log: peak memory against the table kept, and how soon a malformed log is refused.

    python benchmarks/big_log.py [--rows 8500000] [--out benchmarks/results/big_log.json]

Writes, in a temporary folder, a Taobao-layout log (``user,item,category,behavior,timestamp``, no header; the
UserBehavior.csv layout) of ``--rows`` rows (8.5 M rows: about 200 MB, the size the issue measured), and a file of
the same size of random text read as ``--format sequences`` whose line 4 is bad. Each is loaded by
``load_interactions`` in a fresh process:

- ``peak_growth_mb``: the process's peak resident memory (``VmHWM``) minus its resident memory just before the
  load (after the imports);
- ``kept_mb``: what the loaded log holds: the canonical table (its arrays, and each distinct object an object
  column points to, once) and the item features (the Taobao layout's category of each item), and the ratio of the
  two (target ≤ 3);
- for the malformed file: the seconds until the refusal (target ≤ 5) and the message.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_report import write_report

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, time
from pathlib import Path
import pandas as pd
from fedseqrec.data.formats import load_interactions
from fedseqrec.errors import DataError

def status_mb(field):  # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss still counts the parent's pages
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def kept_bytes(frame):  # each column's arrays, and each distinct object an object column points to, once
    total = 0
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object:
            objects = {id(v): v for v in column.to_numpy()}
            total += 8 * len(column) + sum(sys.getsizeof(v) for v in objects.values())
        else:
            total += int(column.memory_usage(index=False, deep=True))
    return total

before, start = status_mb("VmRSS"), time.perf_counter()
try:
    log = load_interactions(Path(sys.argv[1]), sys.argv[2])
    features = log.item_features
    kept = kept_bytes(log.events) + (features.memory_usage(index=True, deep=True).sum() if features is not None else 0)
    outcome = {"rows": len(log), "seconds": time.perf_counter() - start, "kept_mb": float(kept) / 2**20}
except DataError as err:
    outcome = {"refused": str(err).replace(sys.argv[1], "FILE"), "seconds": time.perf_counter() - start}
outcome["peak_growth_mb"] = status_mb("VmHWM") - before
print(json.dumps(outcome))
"""


def write_taobao(path: Path, rows: int, seed: int = 0) -> None:
    """A UserBehavior.csv-like log: 1 M-user ids, 4 M-item ids, 9k categories, pv/cart/fav/buy, seconds."""
    rng = np.random.default_rng(seed)
    with path.open("w") as handle:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            users = rng.integers(1, 1_000_000, n)
            items = rng.integers(1, 5_000_000, n)
            categories = rng.integers(1, 5_000_000, n)
            behaviours = np.array(["pv", "pv", "pv", "pv", "pv", "pv", "cart", "fav", "buy"])[rng.integers(0, 9, n)]
            times = rng.integers(1_511_539_200, 1_512_316_800, n)
            lines = [
                f"{u},{i},{c},{b},{t}\n"
                for u, i, c, b, t in zip(users, items, categories, behaviours, times, strict=True)
            ]
            handle.write("".join(lines))


def write_random_sequences(path: Path, size: int, seed: int = 1) -> None:
    """Lines of random words: line 4 names a user and no item, and every later line is as random."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(10_000)])
    with path.open("w") as handle:
        handle.write("u1 a b\nu2 c d\nu3 e f\nu4\n")
        written = 0
        while written < size:
            block = "".join(
                " ".join(words[rng.integers(0, len(words), rng.integers(1, 20))]) + "\n" for _ in range(50_000)
            )
            handle.write(block)
            written += len(block)


def probe(path: Path, fmt: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), fmt], capture_output=True, text=True, check=True)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    outcome["file_mb"] = path.stat().st_size / 2**20
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in outcome.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8_500_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "big_log.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "UserBehavior.csv"
        start = time.perf_counter()
        write_taobao(log, args.rows)
        print(f"wrote {log.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
        loaded = probe(log, "taobao")
        loaded["peak_over_kept"] = round(loaded["peak_growth_mb"] / loaded["kept_mb"], 2)
        rows.append({"case": "taobao log", "target_peak_over_kept": 3.0, **loaded})
        print(rows[-1], flush=True)
        random_text = Path(tmp) / "random.txt"
        write_random_sequences(random_text, log.stat().st_size)
        rows.append(
            {"case": "random lines as --format sequences", "target_seconds": 5.0, **probe(random_text, "sequences")}
        )
        print(rows[-1], flush=True)
        broken = Path(tmp) / "broken.csv"
        with log.open() as source, broken.open("w") as copy:
            for number, line in enumerate(source, 1):
                copy.write("1,2,3,pv,yesterday\n" if number == 4 else line)
        rows.append({"case": "taobao log, line 4 bad", "target_seconds": 5.0, **probe(broken, "taobao")})
        print(rows[-1], flush=True)
    write_report(Path(args.out), "big_log", "python benchmarks/big_log.py " + " ".join(sys.argv[1:]), rows)


if __name__ == "__main__":
    main()
