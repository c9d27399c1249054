"""What SecAgg+ costs a round: the same federation with and without `--secure-aggregation`.

    python benchmarks/secure_aggregation.py [--rounds 6] [--out benchmarks/results/secure_aggregation.json]

ml-100k, 10 IID silos, SASRec with the defaults of `fedseqrec simulate` (2 simulated clients at a time on this
machine), evaluated only after the last round. Rows: FedAvg (and FedAvg with
four times the local work a round: batch 16, 2 local epochs), and the federation-wide user-level mechanism with the
noise added by the silos (`--privacy user-level --noise-shares clients`, the mode SecAgg+ makes private against
the server), each without and with SecAgg+ (every silo a neighbour of every other, threshold 0.6: 6 of 10 shares).
A round's time is the loop's `seconds` without evaluation, averaged over rounds 2.. (round 1 pays for starting the
workers); the JSON also keeps the exchange (stages 1-3: keys, shares, training and masking) and unmask times, the
quantisation bound and the test NDCG@10 each run reached.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_report import write_report

from fedseqrec.federated.config import RunConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
MECHANISMS = {
    "fedavg": {},
    # More work a round (the local training that closed most of the FedAvg gap on Beauty): the same fixed cost.
    "fedavg-batch-16-epochs-2": {"batch_size": 16, "local_epochs": 2},
    "user-dp-noise-shares": {
        "mechanism": "user-level",
        "users_per_round": 100,
        "noise_multiplier": 1.0,
        "noise_shares": "clients",
    },
}


def run(mechanism: str, secure: bool, rounds: int, tmp: Path) -> dict:
    cfg = RunConfig.of(
        data=str(DATA / "ml-100k"),
        partition="iid",
        clients=10,
        rounds=rounds,
        eval_every=rounds,
        secure_aggregation=secure,
        **MECHANISMS[mechanism],
    )
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / f"{mechanism}-{secure}")
    log = folder.rounds()
    later = log[1:] or log
    row = {
        "mechanism": mechanism,
        "secure_aggregation": secure,
        "round_seconds": round(float(np.mean([r["seconds"] - r.get("eval_seconds", 0.0) for r in later])), 3),
        "exchange_seconds": round(float(np.mean([r["exchange_seconds"] for r in later])), 3),
        "test_NDCG@10": round(results["test"]["NDCG@10"], 4),
        "params": results["params"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if secure:
        row["unmask_seconds"] = round(float(np.mean([r["secure"]["unmask_seconds"] for r in later])), 3)
        stages = later[0]["secure"]["stage_seconds"]
        row["stage_seconds"] = {
            k: round(float(np.mean([r["secure"]["stage_seconds"][k] for r in later])), 3) for k in stages
        }
        row["bound"] = max(r["secure"]["secagg_bound"] for r in log)
        row["clipped"] = sum(r["secure"]["clipped"] for r in log)
        row["settings"] = results["secure_aggregation"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=list(MECHANISMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "secure_aggregation.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mechanism in args.mechanisms:
            pair = [run(mechanism, secure, args.rounds, Path(tmp)) for secure in (False, True)]
            pair[1]["round_time_ratio"] = round(pair[1]["round_seconds"] / pair[0]["round_seconds"], 3)
            rows += pair
            print(json.dumps(pair, indent=1), flush=True)
    command = f"python benchmarks/secure_aggregation.py --rounds {args.rounds}"
    write_report(args.out, "secure_aggregation", command, rows)


if __name__ == "__main__":
    main()
