"""CPU a deployed ClientApp process spends before its first training step.

In deployment every message starts a fresh ``flwr-clientapp`` process: it imports Flower, loads our ClientApp,
reads the node's data folder, builds the model from the message's weights and trains. This script runs that path
in fresh Python processes — Flower's ``flwr-clientapp`` module imported first, then our app, then one train
message of one local step on an exported client folder (ml-100k, 2 clients) — and reports CPU seconds (user +
system, this process only) after each stage; the median of ``--repeats`` processes.

    python benchmarks/clientapp_startup.py [--ml100k ../shared/data/ml-100k] [--repeats 5]
                                           [--out benchmarks/results/clientapp_startup.json]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

marks = {"python": cpu()}
from flwr.supernode.cli import flwr_clientapp  # what Flower's flwr-clientapp process imports
marks["flower"] = cpu()
from fedseqrec.client.client_app import app
marks["fedseqrec"] = cpu()
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
config, weights, folder = sys.argv[1], sys.argv[2], sys.argv[3]
arrays = ArrayRecord(torch.load(weights, weights_only=True))
content = RecordDict({"arrays": arrays, "config": ConfigRecord(json.loads(open(config).read()))})
message = Message(content, dst_node_id=1, message_type="train")
context = Context(run_id=1, node_id=1, node_config={"data-path": folder}, state=RecordDict(), run_config={})
marks["message"] = cpu()
reply = app(message, context)
assert reply.content["metrics"]["steps"] == 1
marks["first_step"] = cpu()
loaded = {m: m in sys.modules for m in ("torch._dynamo", "opacus", "pandas", "transformers")}
print(json.dumps({"marks": marks, "modules": loaded}))
"""


def prepare(ml100k: Path, tmp: Path) -> tuple[Path, Path, Path]:
    """An exported ml-100k client folder, the run config of a one-step round, and the global model's weights."""
    import torch

    from fedseqrec.data.export import export_partitions
    from fedseqrec.federated.config import RunConfig
    from fedseqrec.federated.task import build_global_model, server_data

    cfg = RunConfig.of(data=str(ml100k), clients=2, local_steps=1, batch_size=32)
    export_partitions(cfg.data, tmp / "clients")
    torch.manual_seed(0)
    model = build_global_model(server_data(cfg).sequences, cfg.model)
    torch.save(model.state_dict(), tmp / "weights.pt")
    (tmp / "config.json").write_text(json.dumps({**cfg.to_run_config(), "server-round": 1}))
    return tmp / "config.json", tmp / "weights.pt", tmp / "clients" / "client-000"


def measure(config: Path, weights: Path, folder: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(weights), str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "clientapp_startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(args.ml100k).resolve(), Path(tmp))
        runs = [measure(*paths) for _ in range(args.repeats)]
    stages = ["flower", "fedseqrec", "message", "first_step"]
    previous = dict(zip(stages, ["python", *stages[:-1]], strict=True))
    cpu = {
        stage: round(statistics.median(r["marks"][stage] - r["marks"][previous[stage]] for r in runs), 2)
        for stage in stages
    }
    cpu["total_to_first_step"] = round(statistics.median(r["marks"]["first_step"] for r in runs), 2)
    report = {
        "command": f"python benchmarks/clientapp_startup.py --repeats {args.repeats}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "cpu_seconds": cpu,
        "modules_loaded": runs[0]["modules"],
        "target_seconds": 4.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
