"""Concurrent HTTP load on `fedseqrec serve`: ``--clients`` keep-alive connections, each sending one
single-history ``POST /recommend`` after the other for ``--seconds``; prints one JSON line (requests per second,
latency percentiles in ms, failures).

    python benchmarks/http_load.py PORT HISTORIES.json [--clients 50] [--seconds 10] [--k 10]

A client of raw HTTP/1.1 on asyncio streams (uvloop when installed), so the load generator costs little of the
CPU it shares with the server. Run by ``benchmarks/serving.py`` in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


async def one_client(port: int, bodies: list[bytes], start: int, until: float, latencies: list, failures: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < until:
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sent = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - sent) * 1000)
            if b" 200 " not in status_line:
                failures.append(status_line.decode().strip())
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies, failures = [], []
    warm_until = time.perf_counter() + 1.0  # connections open and the first batches run before timing
    await asyncio.gather(*(one_client(port, bodies, c * 97, warm_until, [], []) for c in range(clients)))
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(one_client(port, bodies, c * 97, until, latencies, failures) for c in range(clients)))
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            p: round(float(np.percentile(latencies, q)), 2) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))
        },
        "max_ms": round(max(latencies), 2),
        "failed": len(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("histories", help="a JSON file: a list of histories (lists of item tokens)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with open(args.histories) as handle:
        histories = json.load(handle)
    bodies = [json.dumps({"history": h, "k": args.k}).encode() for h in histories]
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(load(args.port, bodies, args.clients, args.seconds))))


if __name__ == "__main__":
    main()
