"""Malicious silos against each aggregation rule: clean test NDCG@10 with and without each defence.

    python benchmarks/robustness.py [--attacks scale sign-flip nan] [--defences fedavg fedmedian ...]
        [--rounds 30] [--fraction 0.2] [--out benchmarks/results/robustness.json]

ml-100k, 10 IID silos, SASRec with the defaults of `fedseqrec simulate`; 20 % of the silos (2, drawn with the
seed) replace their update Δ by 100 Δ (`scale`), −100 Δ (`sign-flip`) or Δ with a NaN (`nan`, which the reply
checks reject before any rule sees it); `poison`: 1 % fake users (`--fake-users 0.01`) push a target item, and the
row reports the target's HR@10 over real users (the attack-free row reports it for the same item). Every row is
one `simulate` run; rows are merged into the JSON by (attack, defence), each with its ratio to the attack-free
FedAvg run of the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.evaluation.evaluator import item_exposure
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.simulation.attacks import ATTACKS, AttackConfig
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


FAKE_USERS = 0.01


def target_exposure(folder: Path) -> dict:
    """The attack-free model's HR@10 for the item the fake users push (the same item: drawn by the seed)."""
    poisoned = load_dataset(DataConfig(data=str(DATA / "ml-100k"), fake_users=FAKE_USERS))
    token = poisoned.options["poisoning"]["target_item"]
    clean = load_dataset(DataConfig(data=str(DATA / "ml-100k")))
    _, model = load_checkpoint(folder, clean.sequences)
    item = int(np.flatnonzero(clean.sequences.vocab.items == token)[0])
    return {"target_item": token, **item_exposure(model, clean.sequences, clean.split, item, max_len=50)}


def run(attack: str, defence: str, rounds: int, fraction: float, tmp: Path) -> dict:
    poison = {"fake_users": FAKE_USERS} if attack == "poison" else {}
    cfg = RunConfig.of(
        data=str(DATA / "ml-100k"),
        partition="iid",
        clients=10,
        rounds=rounds,
        eval_every=5,
        batch_size=16,
        **DEFENCES[defence],
        **poison,
    )
    threat = AttackConfig(attack=attack if attack in ATTACKS else "none", attack_fraction=fraction, attack_scale=100.0)
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / f"{attack}-{defence}", attack=threat)
    rounds_log = folder.rounds()
    poisoning = results.get("poisoning") or (target_exposure(folder.path) if attack == "none" else None)
    return {
        "attack": attack,
        "defence": defence,
        "test": {k: round(results["test"][k], 4) for k in ("NDCG@10", "HR@10")},
        "valid": round(results["valid"]["NDCG@10"], 4),
        "best_round": results["best_round"],
        "rejected": sum(sum(1 for f in r.get("failed", []) if "rejected" in f) for r in rounds_log),
        "malicious": threat.malicious(10, cfg.data.seed) if threat.attack != "none" else [],
        "poisoning": poisoning,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", nargs="+", default=["scale", "sign-flip", "nan", "poison"])
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
