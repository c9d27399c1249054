"""Compressed client updates (`--compression`) against float32 on a FedAvg federation of Amazon Beauty.

    python benchmarks/compressed_updates.py [--modes none fp16 int8 int4 topk:0.1 topk:0.05] [--rounds 8] [--seed 0]
                                            [--out benchmarks/results/compressed_updates.json]

`fedseqrec simulate --partition iid --clients 10` on Beauty with the Beauty preset (papers.py's amazon flags for
SASRec, constant rate), 4 local epochs at batch 64 a round as the FedAvg benchmark's best plain variant, the same
seed for every mode: the same partition, initial model and batches, so the modes differ only by what the clients
send. For each mode: the mean bytes of a client's reply a round (the arrays' data, as the server received them),
the bytes a round (all clients; the server's float32 weights sent to them are the same in every mode and listed
apart), test NDCG@10 of the best validation round, and its loss relative to `none`.
Targets (issue 30): ≥ 4× fewer bytes a round at ≤ 1 % relative loss of test NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchmark_report import write_report
from papers import AMAZON_FIT, AMAZON_MODEL

from fedseqrec.federated.config import RunConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
BEAUTY = str(DATA / "amazon-beauty" / "Beauty.txt")


def run(mode: str, rounds: int, seed: int, tmp: Path) -> dict:
    name, _, share = mode.partition(":")
    compression = {"compression": name, **({"topk_share": float(share)} if share else {})}
    federation = {"partition": "iid", "clients": 10, "rounds": rounds, "eval_every": 2}
    fit = {**AMAZON_FIT, "batch_size": 64, "local_epochs": 4, "protocol": "full-history-removed", "threads": 1}
    cfg = RunConfig.of(data=BEAUTY, seed=seed, **AMAZON_MODEL, **fit, **federation, **compression)
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / mode.replace(":", "-"))
    rounds_run = list(folder.rounds())
    weights = torch.load(folder.path / "model.pt", weights_only=True)  # what the server sends each client
    uploads = [r["update_bytes"] for r in rounds_run if "update_bytes" in r]
    return {
        "mode": mode,
        "client_reply_bytes": round(sum(uploads) / len(uploads)),
        "round_upload_bytes": round(sum(uploads) / len(uploads)) * 10,
        "round_download_bytes": 10 * sum(v.numel() * v.element_size() for v in weights.values()),
        "test": {k: round(results["test"][k], 4) for k in ("NDCG@10", "HR@10")},
        "best_round": results["best_round"],
        "valid_by_round": [[r["round"], round(r["valid"]["NDCG@10"], 4)] for r in rounds_run if "valid" in r],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["none", "fp16", "int8", "int4", "topk:0.1", "topk:0.05"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compressed_updates.json")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in options.modes:
            rows.append(run(mode, options.rounds, options.seed, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["mode"] == "none"), None)
    if base is not None:
        for row in rows:
            row["bytes_ratio"] = round(base["client_reply_bytes"] / row["client_reply_bytes"], 2)
            row["relative_ndcg_loss"] = round(1 - row["test"]["NDCG@10"] / base["test"]["NDCG@10"], 4)
    command = "python benchmarks/compressed_updates.py " + " ".join(sys.argv[1:])
    write_report(options.out, "compressed_updates", command, rows)
    for row in rows:
        print(row["mode"], row.get("bytes_ratio"), row["test"]["NDCG@10"], row.get("relative_ndcg_loss"))


if __name__ == "__main__":
    main()
