"""Malicious silos against each aggregation rule: clean test NDCG@10 with and without each defence.

    python benchmarks/robustness.py [--attacks scale sign-flip nan] [--defences fedavg fedmedian ...]
        [--rounds 30] [--fraction 0.2] [--out benchmarks/results/robustness.json]

ml-100k, 10 IID silos, SASRec with the defaults of `fedseqrec simulate`; 20 % of the silos (2, drawn with the
seed) replace their update Δ by 100 Δ (`scale`), −100 Δ (`sign-flip`) or Δ with a NaN (`nan`, which the reply
checks reject before any rule sees it). Every row is one `simulate` run; rows are merged into the JSON by
(attack, defence), each with its ratio to the attack-free FedAvg run of the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from fedseqrec.federated.config import RunConfig
from fedseqrec.simulation.attacks import AttackConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
DEFENCES = {  # f = 2: the number of malicious silos, known to the rules that need it
    "fedavg": {},
    "fedmedian": {"strategy": "fedmedian"},
    "fedtrimmedavg": {"strategy": "fedtrimmedavg", "trim_beta": 0.2},
    "krum": {"strategy": "krum", "byzantine_clients": 2},
    "multikrum": {"strategy": "multikrum", "byzantine_clients": 2},
    # Bulyan needs n ≥ 4f + 3: with 10 silos it can be told of one malicious silo only (there are two).
    "bulyan-f1": {"strategy": "bulyan", "byzantine_clients": 1},
}


def run(attack: str, defence: str, rounds: int, fraction: float, tmp: Path) -> dict:
    cfg = RunConfig.of(data=str(DATA / "ml-100k"), partition="iid", clients=10, rounds=rounds, eval_every=5,
                       batch_size=16, **DEFENCES[defence])  # fmt: skip
    threat = AttackConfig(attack=attack, attack_fraction=fraction, attack_scale=100.0)
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / f"{attack}-{defence}", attack=threat)
    rounds_log = folder.rounds()
    return {
        "attack": attack,
        "defence": defence,
        "test": {k: round(results["test"][k], 4) for k in ("NDCG@10", "HR@10")},
        "valid": round(results["valid"]["NDCG@10"], 4),
        "best_round": results["best_round"],
        "rejected": sum(sum(1 for f in r.get("failed", []) if "rejected" in f) for r in rounds_log),
        "malicious": threat.malicious(10, cfg.data.seed) if attack != "none" else [],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["scale", "sign-flip", "nan"])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    rows = report["rows"]

    def keep(row: dict) -> None:
        rows[:] = [r for r in rows if (r["attack"], r["defence"]) != (row["attack"], row["defence"])] + [row]
        clean = next((r["test"]["NDCG@10"] for r in rows if r["attack"] == "none" and r["defence"] == "fedavg"), None)
        for r in rows:
            r["ratio_to_clean_fedavg"] = round(r["test"]["NDCG@10"] / clean, 3) if clean else None
        machine = {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
        report.update(rounds=args.rounds, fraction=args.fraction, machine=machine)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        keep(run("none", "fedavg", args.rounds, args.fraction, Path(tmp)))
        for attack in args.attacks:
            for defence in args.defences if attack != "nan" else ["fedavg"]:
                keep(run(attack, defence, args.rounds, args.fraction, Path(tmp)))


if __name__ == "__main__":
    main()
