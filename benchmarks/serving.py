"""Latency and throughput of `fedseqrec serve` on loopback, and a model swap under load.

    python benchmarks/serving.py [--models sasrec gru4rec bert4rec] [--requests 500] [--out ...]

Amazon Beauty (12,101 items), each model trained for one epoch by `fedseqrec train --epochs 1` (latency does not
depend on what the weights learnt), served by the real `fedseqrec serve` process on 127.0.0.1; the client is in this
process with one persistent HTTP connection. One-request latency: `--requests` sequential POST /recommend of one
real user's history (k = 10, seen items excluded), p50 / p99 / max after 20 warm-up requests. Batched throughput:
POST /recommend with 256 histories a request, users per second over `--batches` requests. Swap under load: a thread
keeps requesting while new weights are written into the folder three times; every response must be 200, and the
served SHA-256 must change. Concurrent load: `--clients` (50) keep-alive connections send single-history requests
for `--seconds` (benchmarks/http_load.py, in its own process on the same two cores), requests per second and
p50 / p99 latency (targets: ≥ 1,000 requests/s, p99 ≤ 100 ms), with the load average before it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_report import write_report

from fedseqrec.results.folder import RunFolder
from fedseqrec.serving.recommender import load_recommender

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
BEAUTY = str(DATA / "amazon-beauty" / "Beauty.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, payload: dict) -> tuple[int, dict]:
        self.connection.request("POST", "/recommend", json.dumps(payload), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def get(self, path: str) -> dict:
        self.connection.request("GET", path)
        return json.loads(self.connection.getresponse().read())


def serve(folder: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """`fedseqrec serve FOLDER` on a free port (``extra``: more flags), once it answers /health."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedseqrec.cli", "serve", str(folder), "--port", str(port), "--poll", "0.2", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(600):
        try:
            Client(port).get("/health")
            return process, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(process.stderr.read().decode())


def measure(model: str, requests: int, batches: int, clients: int, seconds: float, tmp: Path) -> dict:
    folder = tmp / model
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fedseqrec.cli",
            "train",
            "--data",
            BEAUTY,
            "--model",
            model,
            "--epochs",
            "1",
            "--out",
            str(folder),
        ],
        check=True,
        capture_output=True,
    )
    recommender = load_recommender(folder)
    users = list(recommender.users)[:2000]
    histories = [recommender.history_of(u) for u in users]
    process, port = serve(folder)
    try:
        client = Client(port)
        for history in histories[:20]:
            client.post({"history": history, "k": 10})
        latencies = []
        for i in range(requests):
            start = time.perf_counter()
            status, _ = client.post({"history": histories[i % len(histories)], "k": 10})
            latencies.append((time.perf_counter() - start) * 1000)
            assert status == 200
        start = time.perf_counter()
        for b in range(batches):
            chunk = [histories[(b * 256 + j) % len(histories)] for j in range(256)]
            assert client.post({"histories": chunk, "k": 10})[0] == 200
        throughput = batches * 256 / (time.perf_counter() - start)
        concurrent = concurrent_load(port, histories, clients, seconds, tmp)
        swap = swap_under_load(folder, port, histories)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)
    return {
        "model": model,
        "items": recommender.n_items,
        "latency_ms": {
            "p50": _ms(np.percentile(latencies, 50)),
            "p99": _ms(np.percentile(latencies, 99)),
            "max": _ms(max(latencies)),
        },
        "requests": requests,
        "batched_users_per_second": round(throughput, 1),
        "concurrent": concurrent,
        "swap": swap,
        "exit_code_on_sigterm": exit_code,
    }


def concurrent_load(port: int, histories: list, clients: int, seconds: float, tmp: Path) -> dict:
    """``clients`` connections sending single-history requests at once (benchmarks/http_load.py, its own process,
    on the same cores as the server), with the machine's load average before it started."""
    path = tmp / "histories.json"
    path.write_text(json.dumps(histories))
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("http_load.py")), str(port), str(path)]
        + ["--clients", str(clients), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_average_before": round(load_before, 2)}


def _ms(value: float) -> float:
    return round(float(value), 2)


def swap_under_load(folder: Path, port: int, histories: list) -> dict:
    """Requests from a second connection while the weights are replaced three times: all must succeed."""
    statuses, digests, stop = [], set(), threading.Event()

    def load() -> None:
        client = Client(port)
        i = 0
        while not stop.is_set():
            status, answer = client.post({"history": histories[i % len(histories)], "k": 10})
            statuses.append(status)
            digests.add(answer.get("sha256"))
            i += 1

    worker = threading.Thread(target=load)
    worker.start()
    state = torch.load(folder / "model.pt", weights_only=True)
    for round_ in (1, 2, 3):
        time.sleep(1.0)
        scaled = {k: v * (1 + 0.01 * round_) if v.is_floating_point() else v for k, v in state.items()}
        RunFolder(folder).save_model(scaled, {"round": round_, "valid_NDCG@10": 0.0})
    time.sleep(2.0)
    stop.set()
    worker.join()
    return {"requests": len(statuses), "failed": sum(s != 200 for s in statuses), "weights_seen": len(digests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "bert4rec"])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections of the load test")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the load test lasts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows.append(measure(model, args.requests, args.batches, args.clients, args.seconds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/serving.py " + " ".join(sys.argv[1:])
    write_report(args.out, "serving", command, rows)


if __name__ == "__main__":
    main()
