"""Centralized baselines: every model plus `pop`, leave-one-out, full ranking, default settings.

    python benchmarks/centralized.py [--ml100k ../shared/data/ml-100k] [--datasets ml-100k shop]
                                     [--models gru4rec lstm sasrec bert4rec pop] [--budget 274]
                                     [--out benchmarks/results/centralized.json]

For each dataset and model it runs `fedseqrec train` with its defaults until early stopping (the converged
figure) and, for sasrec on ml-100k, once more capped at --budget seconds of training (the time-to-quality
target: a fifth of RecBole's 1,370 s). Run folders go to a temporary directory; the JSON keeps the metrics, and
rows measured again replace their earlier versions in place (others are kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig
from fedseqrec.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("NDCG@10", "HR@10", "MRR@10")


def run(data: str, model: str, tmp: Path, max_seconds: float | None = None) -> dict:
    tag = f"{Path(data).name}-{model}-{'budget' if max_seconds else 'converged'}"
    result = train_centralized(
        DataConfig(data=data),
        ModelConfig(name=model),
        TrainConfig(max_seconds=max_seconds),
        tmp / tag,
    )
    row = {
        "data": Path(data).name,
        "model": model,
        "run": "budget" if max_seconds else "converged",
        "test": {k: round(result["test"][k], 4) for k in KEYS},
        "valid": {k: round(result["valid"][k], 4) for k in KEYS},
        "params": result["params"],
        "train_seconds": result["train_seconds"],
        "epochs": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
        "seconds_per_epoch": result.get("seconds_per_epoch"),
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    header = (
        "data",
        "model",
        "run",
        "test NDCG@10",
        "test HR@10",
        "test MRR@10",
        "valid NDCG@10",
        "params",
        "train s",
        "s/epoch",
        "epochs (best)",
    )
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = r["test"]
        lines.append(
            f"| {r['data']} | {r['model']} | {r['run']} | {t['NDCG@10']:.4f} | {t['HR@10']:.4f} | "
            f"{t['MRR@10']:.4f} | {r['valid']['NDCG@10']:.4f} | {r['params']:,} | {r['train_seconds']:.0f} | "
            f"{r['seconds_per_epoch'] or '-'} | {r['epochs'] or '-'} ({r['best_epoch'] or '-'}) |"
        )
    return "\n".join(lines)


def merged(out: Path, rows: list[dict]) -> list[dict]:
    """The rows just measured in place of the same (data, model, run) rows of an earlier JSON, the others kept:
    one model can be re-measured without running them all."""
    if not out.exists():
        return rows
    fresh = {(r["data"], r["model"], r["run"]): r for r in rows}
    kept = [fresh.pop((r["data"], r["model"], r["run"]), r) for r in json.loads(out.read_text())["rows"]]
    return kept + list(fresh.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "shop"])
    parser.add_argument("--models", nargs="+", default=["pop", "sasrec", "gru4rec", "lstm", "bert4rec"])
    parser.add_argument("--budget", type=float, default=274.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "centralized.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            data = args.ml100k if name == "ml-100k" else name
            for model in args.models:
                if name == "ml-100k" and model == "sasrec":
                    rows.append(run(data, model, Path(tmp), max_seconds=args.budget))
                rows.append(run(data, model, Path(tmp)))
    out = Path(args.out)
    rows = merged(out, rows)
    results = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "table": table(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])


if __name__ == "__main__":
    main()
