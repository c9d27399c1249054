"""Hyper-parameter search, measured: a `fedseqrec tune` study, its wall time, and the tuned configuration's test
figures over three seeds beside the hand preset's.

    python benchmarks/tune.py ml-100k [--trials 50] [--timeout 3600] [--seeds 0 1 2] [--keep DIR]
    python benchmarks/tune.py private-ml-100k [--trials 10] [--keep DIR]

`ml-100k`: SASRec, `fedseqrec train`'s defaults (the movielens preset of benchmarks/papers.py, RecBole's protocol:
full ranking) with at most 150 epochs and a patience of 10, tuned on the validation split over lr, weight decay,
dropout, label smoothing, layers (1–2) and max-len (50, 100) with TPE and median pruning. The best trial's command
line is then run with seeds 0, 1 and 2 (seed 0: the trial itself, reproduced): the row is their mean ± std.

`private-ml-100k`: 10 IID silos, user-level DP at ε = 8 (the recipe of benchmarks/privacy_curve.py), an accounted
search (`--tuning-privacy accounted`: noised scores, a random number of trials of mean --trials) over the clipping
norm and the server's rate; the search's ε beside one run's, and the released model beside the untuned private
default (the same run with every searched option at its declared default).

Writes benchmarks/results/tune_DATASET.json (each study's command, every trial, the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_report import spread

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
ML = str(DATA / "ml-100k")
# (max-len 200 costs four times an epoch of 50: a 50-trial study on two cores searches 50 and 100)
SEARCH = ["lr", "weight-decay", "dropout", "label-smoothing", "layers=1:2", "max-len=50,100"]
PRIVATE_RUN = [
    "--data", ML, "--partition", "iid", "--clients", "10", "--privacy", "user-level", "--users-per-round", "300",
    "--rounds", "150", "--strategy", "fedadam", "--epsilon", "8", "--eval-every", "50", "--tie-items",
    "--item-rows", "800",
]  # fmt: skip
PRIVATE_SEARCH = ["max-grad-norm", "server-lr"]


def fedseqrec(argv: list[str], log: Path) -> float:
    """Run ``fedseqrec ARGV`` (output to ``log`` and the terminal's stderr, a line at a time); its wall seconds."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ fedseqrec " + shlex.join(argv) + "\n")
        process = subprocess.Popen(
            [sys.executable, "-m", "fedseqrec.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            handle.write(line)
            if line.startswith(("trial", "privacy of", "best", "accounted")):
                print(line.rstrip(), file=sys.stderr, flush=True)
    if process.wait() != 0:
        raise SystemExit(f"fedseqrec {' '.join(argv[:3])} failed: see {log}")
    return time.perf_counter() - start


def _seed_runs(command: list[str], seeds: list[int], work: Path, log: Path) -> list[dict]:
    """The best trial's command line again with each of ``seeds`` (``--seed`` replaced): its metrics."""
    runs = []
    for seed in seeds:
        argv = list(command[1:])
        if "--seed" in argv:
            del argv[argv.index("--seed") : argv.index("--seed") + 2]
        argv[argv.index("--out") + 1] = str(work / f"seed-{seed}")
        fedseqrec([*argv, "--seed", str(seed)], log)
        runs.append(json.loads((work / f"seed-{seed}" / "metrics.json").read_text()))
    return runs


def study_rows(out: Path) -> tuple[dict, list[dict]]:
    study = json.loads((out / "study.json").read_text())
    trials = [
        {k: t.get(k) for k in ("trial", "state", "params", "value", "seconds", "last_step", "failed")}
        | {"test_NDCG@10": (t.get("test") or {}).get("NDCG@10")}
        for t in study["trials"]
    ]
    return study, trials


def tune_ml100k(options, work: Path, log: Path) -> dict:
    out = work / "study"
    # Each trial at most 150 epochs, stopped after 10 evaluations without a better validation figure (the defaults:
    # 200 and 25): a budget a 50-trial study can afford on two cores.
    argv = ["tune", "train", "--data", ML, "--model", "sasrec", "--threads", str(options.threads),
            "--epochs", "150", "--patience", "10", "--trials", str(int(options.trials)), "--out", str(out)]  # fmt: skip
    argv += [f for key in SEARCH for f in ("--search", key)]
    if options.timeout:
        argv += ["--timeout", str(options.timeout)]
    wall = fedseqrec(argv, log)
    study, trials = study_rows(out)
    best = study["best"]
    command = shlex.split(best["command"])
    runs = _seed_runs(command, options.seeds, work, log)
    preset = json.loads((RESULTS / "papers_ml-100k.json").read_text())["rows"]
    sasrec = next(r for r in preset if r["model"] == "sasrec")
    return {
        "command": "fedseqrec " + shlex.join(argv).replace(ML, "$FEDSEQREC_DATA_DIR/ml-100k").replace(str(out), "OUT"),
        "search_seconds": round(wall, 1),
        "trials": trials,
        "states": {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail")},
        "best_trial": best["trial"],
        "best_params": best["params"],
        "best_command": best["command"].replace(ML, "$FEDSEQREC_DATA_DIR/ml-100k"),
        "best_valid_NDCG@10": round(best["value"], 4),
        "reproduced_exactly": runs[0]["test"] == best["test"] if options.seeds[0] == 0 else None,
        "tuned": {
            "seeds": options.seeds,
            "test_NDCG@10": spread([round(r["test"]["NDCG@10"], 4) for r in runs]),
            "valid_NDCG@10": spread([round(r["valid"]["NDCG@10"], 4) for r in runs]),
        },
        "preset": {"test_NDCG@10": sasrec["test"]["NDCG@10"], "valid_NDCG@10": sasrec["valid"]["NDCG@10"]},
        "target": {"test_NDCG@10": 0.0600, "trials": 50, "recbole": 0.0581},
    }


def tune_private(options, work: Path, log: Path) -> dict:
    out = work / "study"
    argv = ["tune", "simulate", *PRIVATE_RUN, "--trials", str(options.trials), "--out", str(out)]
    argv += [f for key in PRIVATE_SEARCH for f in ("--search", key)]
    wall = fedseqrec(argv, log)
    study, trials = study_rows(out)
    ledger = json.loads((out / "privacy_search.json").read_text())
    default = work / "default"
    fedseqrec(["simulate", *PRIVATE_RUN, "--out", str(default)], log)  # every searched option at its default
    untuned = json.loads((default / "metrics.json").read_text())
    best = study["best"]
    return {
        "command": "fedseqrec " + shlex.join(argv).replace(ML, "$FEDSEQREC_DATA_DIR/ml-100k").replace(str(out), "OUT"),
        "search_seconds": round(wall, 1),
        "trials": trials,
        "privacy": {k: v for k, v in ledger.items() if k != "trials"},
        "best_trial": best["trial"],
        "best_params": best["params"],
        "best_noised_valid": round(best["value"], 4),
        "best_test_NDCG@10": round(best["test"]["NDCG@10"], 4),
        "untuned_default": {
            "test_NDCG@10": round(untuned["test"]["NDCG@10"], 4),
            "valid_NDCG@10": round(untuned["valid"]["NDCG@10"], 4),
            "epsilon": untuned["privacy"]["max_epsilon"],
        },
        "target": {"epsilon_ratio": 1.5, "trials_at_least": 10},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=("ml-100k", "private-ml-100k"))
    parser.add_argument("--trials", type=float, default=None, help="default: 50 (ml-100k), 10 (private, the mean)")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the study and runs in this folder")
    options = parser.parse_args()
    options.trials = options.trials or (50 if options.study == "ml-100k" else 10)
    with tempfile.TemporaryDirectory() as scratch:
        work = options.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "tune.log"
        figures = (tune_ml100k if options.study == "ml-100k" else tune_private)(options, work, log)
    result = {
        "benchmark": f"python benchmarks/tune.py {' '.join(sys.argv[1:])}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **figures,
    }
    path = RESULTS / f"tune_{options.study}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=2))


if __name__ == "__main__":
    main()
