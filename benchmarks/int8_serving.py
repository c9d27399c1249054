"""int8 serving weights (`fedseqrec serve --int8`) against float32: throughput, latency, quality.

    python benchmarks/int8_serving.py [RUN_DIR ...] [--beauty-seeds 0 1 2] [--requests 400] [--batches 40]
                                      [--repeats 7] [--clients 50] [--seconds 10]
                                      [--out benchmarks/results/int8_serving.json]

Each RUN_DIR is a folder `fedseqrec train` wrote (a model trained to its quality: the ranking int8 costs is
measured on weights that learnt something); `--beauty-seeds` adds the Beauty SASRec of `benchmarks/papers.py`'s
amazon preset for each seed (benchmarks/runs/beauty/sasrec-amazon-SEED/sasrec, as `head_items.py` keeps seed 0;
trained when missing, about 6 minutes each). For float32 and int8 weights of the same model, on the CPU:
- quality: test NDCG@10 / HR@10 of the run's own protocol, every test user (`fedseqrec evaluate`'s figures);
- the model's throughput: users per second of `Recommender.recommend_batch` on batches of 256 real histories
  (median of `--repeats`, float32 and int8 alternating);
- one request's latency in the process: p50 / p99 of `recommend` on one history at a time;
- over HTTP: `fedseqrec serve [--int8]` under `--clients` concurrent connections (benchmarks/http_load.py),
  requests per second and p99.
With several runs (the seeds of one preset), `summary` gives each compared figure over them, mean ± standard
deviation. Targets (issue 30): ≥ 1.5× throughput at ≤ 1 % relative loss of test NDCG@10.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_report import spread, write_report
from head_items import sasrec_folder
from privacy_curve import ROOT
from serving import concurrent_load, serve

from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.serving.recommender import load_recommender

BEAUTY_RUNS = ROOT / "benchmarks" / "runs" / "beauty"


def model_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def measure(folder: Path, options: argparse.Namespace, tmp: Path) -> list[dict]:
    """float32 and int8 weights of one run. Their throughput and latency are taken in alternating repetitions
    (median of each), so that a busy spell of the shared machine falls on both."""
    recommenders = [load_recommender(folder, device="cpu", int8=int8) for int8 in (False, True)]
    protocol = json.loads((folder / "metrics.json").read_text()).get("protocol", "full")
    users = list(recommenders[0].users)[:4096]
    histories = [recommenders[0].history_of(u) for u in users]
    speeds: list[list[float]] = [[], []]
    latencies: list[list[float]] = [[], []]
    for _ in range(options.repeats):
        for which, recommender in enumerate(recommenders):
            speeds[which].append(users_per_second(recommender, histories, options.batches))
            latencies[which].extend(latencies_ms(recommender, histories, options.requests))
    rows = []
    for which, recommender in enumerate(recommenders):
        model, ds = recommender.model, recommender.ds
        test = evaluate(model, ds.sequences, ds.split, "test", max_len=model.cfg.max_len, protocol=protocol)
        process, port = serve(folder, "--device", "cpu", *(["--int8"] if which else []))
        try:
            http = concurrent_load(port, histories, options.clients, options.seconds, tmp)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        rows.append(
            {
                "run": f"{folder.parent.name}/{folder.name}",
                "model": model.name,
                "weights": "int8" if which else "float32",
                "weights_bytes": model_bytes(model),
                "test": {k: round(test[k], 4) for k in ("NDCG@10", "HR@10")},
                "protocol": protocol,
                "batched_users_per_second": round(float(np.median(speeds[which])), 1),
                "batched_users_per_second_each": [round(x, 1) for x in speeds[which]],
                "latency_ms": {
                    "p50": round(float(np.percentile(latencies[which], 50)), 2),
                    "p99": round(float(np.percentile(latencies[which], 99)), 2),
                },
                "http": http,
            }
        )
    return rows


def users_per_second(recommender, histories: list[list[str]], batches: int) -> float:
    """``recommend_batch`` on ``batches`` batches of 256 real histories, after one for warm-up."""
    recommender.recommend_batch(histories[:256])
    start = time.perf_counter()
    for b in range(batches):
        recommender.recommend_batch([histories[(b * 256 + j) % len(histories)] for j in range(256)])
    return batches * 256 / (time.perf_counter() - start)


def latencies_ms(recommender, histories: list[list[str]], requests: int) -> list[float]:
    """One ``recommend`` at a time, ``requests`` times."""
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        recommender.recommend(histories[i % len(histories)])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def compare(full: dict, int8: dict) -> dict:
    return {
        "run": full["run"],
        "throughput_ratio": round(int8["batched_users_per_second"] / full["batched_users_per_second"], 2),
        "http_ratio": round(int8["http"]["requests_per_second"] / full["http"]["requests_per_second"], 2),
        "relative_ndcg_loss": round(1 - int8["test"]["NDCG@10"] / full["test"]["NDCG@10"], 4),
        "bytes_ratio": round(full["weights_bytes"] / int8["weights_bytes"], 2),
    }


def summary(rows: list[dict]) -> dict:
    """Each compared figure over the runs: mean ± standard deviation, and each run's."""
    compared = [row["compared"] for row in rows]
    out = {"runs": [c["run"] for c in compared]}
    for key in ("throughput_ratio", "http_ratio", "relative_ndcg_loss"):
        out[key] = spread([c[key] for c in compared], each="per_run")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--beauty-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7, help="alternating repetitions of the in-process timings")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_serving.json")
    options = parser.parse_args()
    runs = options.runs + [sasrec_folder(BEAUTY_RUNS, seed) for seed in options.beauty_seeds]
    if not runs:
        parser.error("name a RUN_DIR or --beauty-seeds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in runs:
            pair = measure(folder, options, Path(tmp))
            rows.append({"float32": pair[0], "int8": pair[1], "compared": compare(*pair)})
            print(json.dumps(rows[-1]["compared"]), flush=True)
    command = "python benchmarks/int8_serving.py " + " ".join(sys.argv[1:])
    write_report(options.out, "int8_serving", command, rows, summary=summary(rows))


if __name__ == "__main__":
    main()
