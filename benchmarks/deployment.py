"""Round wall time on Flower's deployment engine (real SuperLink and SuperNode processes on 127.0.0.1, TLS and
SuperNode authentication) against the simulation engine, for the same run.

    python benchmarks/deployment.py [--ml100k ../shared/data/ml-100k] [--rounds 5] [--clients 2 4]
                                    [--out benchmarks/results/deployment.json]

Runs, for each number of clients: ml-100k (IID silos, sasrec, one local epoch, centralized evaluation every round)
in the simulation and deployed with Flower's `subprocess` and `process` isolation; and a floor run (tiny shop data,
one local step, a one-block model of width 16) in both engines, whose rounds are almost all engine time. Per run:
seconds per round, the slowest client's own work (each client times its handler, after its imports), evaluation,
and the rest (the engine: message passing, polling, starting a ClientApp process per message). Also what a fresh
process pays before and during a deployed message (CPU seconds, fresh Python each, median of 3): Flower's
`flwr-clientapp` imports, our ClientApp's imports (torch included), and torch's first optimizer (which imports
torch._dynamo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedseqrec.deployment.runner import deploy_local
from fedseqrec.federated.config import RunConfig
from fedseqrec.results.folder import RunFolder
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]


def per_round(rounds: list[dict]) -> dict:
    n = max(1, len(rounds))
    wall = sum(r["seconds"] for r in rounds) / n
    evaluation = sum(r.get("eval_seconds", 0.0) for r in rounds) / n
    clients = sum(r["max_client_seconds"] for r in rounds) / n  # clients train side by side: the slowest counts
    return {
        "seconds_per_round": round(wall, 2),
        "slowest_client_seconds": round(clients, 2),
        "eval_seconds": round(evaluation, 2),
        "engine_seconds": round(wall - evaluation - clients, 2),
        "engine_share": round((wall - evaluation - clients) / wall, 3) if wall else None,
    }


def run(engine: str, cfg: RunConfig, folder: Path) -> dict:
    start = time.perf_counter()
    if engine == "simulation":
        simulate(cfg, out=folder)
    else:
        isolation = engine.split("-", 1)[1]
        deploy_local(cfg, folder, isolation=isolation, on_line=lambda line: print(f"  {line}", flush=True))
    total = time.perf_counter() - start
    rounds = RunFolder(folder).rounds()
    result = {
        "engine": engine,
        "rounds": len(rounds),
        "total_seconds": round(total, 1),
        **per_round(rounds),
        "round_seconds": [round(r["seconds"], 1) for r in rounds],
    }
    print(json.dumps(result), flush=True)
    return result


COLD_START = {
    "python": "pass",
    "flower_clientapp_imports": "from flwr.supernode.cli import flwr_clientapp",
    "our_clientapp_imports": "import fedseqrec.client.client_app",
    "torch": "import torch",
    "torch_first_optimizer": "from fedseqrec.models.optim import adamw; import torch; "
    "p = torch.zeros(1, requires_grad=True); p.grad = torch.ones(1); adamw([p], 0.1, 0.0).step()",
}


def cold_start(repeats: int = 3) -> dict:
    """Seconds a fresh Python takes for each snippet, less a bare Python's start."""

    def seconds(code: str) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    raw = {name: seconds(code) for name, code in COLD_START.items()}
    out = {name: round(raw[name] - raw["python"], 2) for name in COLD_START if name != "python"}
    out["torch_first_optimizer"] = round(raw["torch_first_optimizer"] - raw["torch"], 2)  # beyond importing torch
    out["python"] = round(raw["python"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deployment.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            ml100k = RunConfig.of(
                data=str(Path(args.ml100k).resolve()), clients=clients, rounds=args.rounds, batch_size=16
            )
            floor = RunConfig.of(
                clients=clients,
                rounds=args.rounds,
                local_steps=1,
                shop_users=120,
                shop_items=80,
                shop_categories=5,
                shop_days=20,
                hidden=16,
                layers=1,
                heads=1,
                inner=32,
                max_len=20,
                batch_size=16,
            )
            for name, cfg, engines in (
                ("ml-100k", ml100k, ("simulation", "deployment-subprocess", "deployment-process")),
                ("floor", floor, ("simulation", "deployment-subprocess")),
            ):
                for engine in engines:
                    print(f"[{name}, {clients} clients] {engine}", flush=True)
                    folder = Path(tmp) / f"{name}-{clients}-{engine}"
                    rows.append({"run": name, "clients": clients, **run(engine, cfg, folder)})
    report = {
        "command": f"python benchmarks/deployment.py --rounds {args.rounds} --clients "
        + " ".join(map(str, args.clients)),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "cold_start_seconds": cold_start(),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
