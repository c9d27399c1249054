"""Federated benchmarks on ml-100k through `fedseqrec simulate`'s engine (Flower simulation, Ray, 1 CPU per client).

    python benchmarks/federated.py iid       # 10 IID silos, FedAvg, sasrec, vs. the centralized figure
    python benchmarks/federated.py non-iid   # dirichlet alpha=0.1 and attribute silos x FedAvg, FedProx, FedAdam
    python benchmarks/federated.py per-user  # 943 clients (one per user), 20 a round, 100 rounds: time and parts
    python benchmarks/federated.py beauty-per-user  # Amazon Beauty: 22,363 clients, 100 a round, 100 rounds
    [--ml100k ../shared/data/ml-100k] [--beauty ../shared/data/amazon-beauty/Beauty.txt] [--rounds N]
    [--out benchmarks/results/federated-SCENARIO.json]

Peak memory is the largest sum of the resident memory of this process and every process it started (Ray's
workers included), sampled twice a second.

Each run folder goes to a temporary directory; the JSON keeps the final metrics and the per-round timing:
round wall time, time spent in centralized evaluation, the exchange (model out to last reply), the clients' own
work (each client times its whole handler), and the engine overhead = exchange - clients' work spread over the
parallel workers (a lower bound of the clients' part, so the overhead is an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedseqrec.data.tasks import task_of
from fedseqrec.federated.config import RunConfig
from fedseqrec.results.summary import format_round
from fedseqrec.server.loop import Progress
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("NDCG@10", "HR@10", "MRR@10")
CENTRALIZED = ROOT / "benchmarks" / "results" / "centralized.json"


def timing(rounds: list[dict], cpus: int) -> dict:
    """Where the round time goes, summed over rounds."""
    wall = sum(r["seconds"] for r in rounds)
    evaluation = sum(r.get("eval_seconds", 0.0) for r in rounds)
    exchange = sum(r["exchange_seconds"] for r in rounds)
    client_lower_bound = sum(
        max(r["max_client_seconds"], r["client_seconds"] / min(cpus, max(1, r["clients"]))) for r in rounds
    )
    overhead = exchange - client_lower_bound
    train_rounds = wall - evaluation
    return {
        "rounds": len(rounds),
        "wall_seconds": round(wall, 1),
        "eval_seconds": round(evaluation, 1),
        "exchange_seconds": round(exchange, 1),
        "client_seconds_total": round(sum(r["client_seconds"] for r in rounds), 1),
        "client_seconds_parallel": round(client_lower_bound, 1),
        "engine_overhead_seconds": round(overhead, 1),
        "engine_overhead_share_of_round": round(overhead / train_rounds, 3) if train_rounds else None,
        "seconds_per_round": round(wall / max(1, len(rounds)), 2),
    }


class PeakMemory:
    """The largest total resident memory of this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _tree_rss(os.getpid()))


def _tree_rss(root: int) -> int:
    parent, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(child for child, p in parent.items() if p == pid)
    return total


def run(cfg: RunConfig, tmp: Path, tag: str) -> dict:
    folder = tmp / tag
    start = time.perf_counter()
    task = task_of(cfg.data.task)
    progress = Progress(
        on_round=lambda r: print(f"[{tag}] {format_round(r, cfg.algorithm.rounds, task)}", flush=True),
        on_message=print,
    )
    with PeakMemory() as memory:
        results, run_folder = simulate(cfg, out=folder, progress=progress)
    total = time.perf_counter() - start
    rounds = run_folder.rounds()
    row = {
        "tag": tag,
        "partition": cfg.data.partition,
        "strategy": cfg.algorithm.strategy,
        "clients": cfg.data.clients,
        "clients_per_round": cfg.algorithm.clients_per_round,
        "rounds": cfg.algorithm.rounds,
        "local_epochs": cfg.fit.local_epochs,
        "batch_size": cfg.fit.batch_size,
        "best_round": results["best_round"],
        "test": {k: round(results["test"][k], 4) for k in KEYS},
        "valid": {k: round(results["valid"][k], 4) for k in KEYS},
        "last_test": {k: round(results["last"]["test"][k], 4) for k in KEYS},
        "total_seconds": round(total, 1),
        "startup_seconds": round(total - sum(r["seconds"] for r in rounds), 1),
        "peak_memory_gib": round(memory.peak / 2**30, 2),
        "protocol": cfg.evaluation.protocol,
        "timing": timing(rounds, cpus=os.cpu_count() or 1),
        "valid_curve": [(r["round"], round(r["valid"]["NDCG@10"], 4)) for r in rounds if "valid" in r],
    }
    print(json.dumps({k: v for k, v in row.items() if k != "valid_curve"}), flush=True)
    return row


def centralized_sasrec() -> dict | None:
    if not CENTRALIZED.exists():
        return None
    rows = json.loads(CENTRALIZED.read_text())["rows"]
    return next(
        (r for r in rows if r["data"] == "ml-100k" and r["model"] == "sasrec" and r["run"] == "converged"), None
    )


def scenarios(name: str, base: RunConfig, rounds: int | None) -> list[tuple[str, RunConfig]]:
    if name == "iid":
        cfg = base.replace(partition="iid", clients=10, rounds=rounds or 100, eval_every=5)
        return [("iid-fedavg", cfg)]
    if name == "non-iid":
        out = []
        for partition, extra in (("dirichlet", {"clients": 10, "alpha": 0.1}), ("attribute", {"clients": None})):
            for strategy in ("fedavg", "fedprox", "fedadam"):
                cfg = base.replace(partition=partition, strategy=strategy, rounds=rounds or 60, eval_every=5, **extra)
                out.append((f"{partition}-{strategy}", cfg))
        return out
    if name == "beauty-per-user":
        cfg = base.replace(
            partition="per-user",
            clients=None,
            clients_per_round=100,
            rounds=rounds or 100,
            eval_every=10,
            protocol="full-history-removed",
        )
        return [("beauty-per-user-fedavg", cfg)]
    if name == "per-user":
        cfg = base.replace(partition="per-user", clients=None, clients_per_round=20, rounds=rounds or 100)
        return [("per-user-fedavg", cfg.replace(eval_every=10))]
    raise SystemExit(f"unknown scenario {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("iid", "non-iid", "per-user", "beauty-per-user"))
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--beauty", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty" / "Beauty.txt"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = args.beauty if args.scenario.startswith("beauty") else args.ml100k
    base = RunConfig.of(data=data, batch_size=args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag, cfg in scenarios(args.scenario, base, args.rounds):
            rows.append(run(cfg, Path(tmp), tag))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"federated-{args.scenario}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": f"python benchmarks/federated.py {args.scenario}"
        + (f" --rounds {args.rounds}" if args.rounds else "")
        + (f" --batch-size {args.batch_size}" if args.batch_size != 16 else ""),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "centralized_sasrec": centralized_sasrec(),
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
