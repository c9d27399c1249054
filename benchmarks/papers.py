"""Every model's preset on a dataset, under the papers' protocol, over several seeds, beside the published figures.

    python benchmarks/papers.py DATASET FILE [--preset amazon|movielens] [--models sasrec gru4rec lstm bert4rec pop]
                                [--seeds 0 1 2] [--max-seconds 1800] [--threads 2] [--device auto]
                                [--out benchmarks/results/papers_DATASET.json]

    python benchmarks/papers.py beauty ../shared/data/amazon-beauty/Beauty.txt
    python benchmarks/papers.py ml-100k ../shared/data/ml-100k --preset movielens --models sasrec

DATASET names the rows (and, for `beauty`, the published figures printed beside them); FILE is what `fedseqrec
train --data` reads: an Amazon category in the papers' one-line-per-user format, a RecBole folder, a CSV log. The
presets are fixed here: the `amazon` preset of each model was chosen on Beauty's *validation* split
(docs/explanations/benchmark-notes.md says how) and is applied unchanged to any other file — a preset tuned on a
test set is not a result. Leave-one-out, each target ranked against every item with the user's earlier items
removed (`full-history-removed`, the S3-Rec / ICLRec / BSARec evaluation code).

Each run is `fedseqrec train` with the preset's flags (printed in the JSON) and a seed; a row is the mean ± standard
deviation over the seeds, with every seed's figures. Each run also records its time-to-quality curve: at every
validation improvement, the training seconds so far, the wall seconds so far (validation included) and the test
NDCG@10 of the model that would be released if the run stopped there (the best validation so far, with its
popularity prior chosen then when the preset has one; measured by this script, outside the run's clock). Rows are
merged into the JSON by model, so models can be measured one at a time.
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
from benchmark_report import spread

from fedseqrec.centralized.config import TrainConfig, prior_beta
from fedseqrec.centralized.popularity_prior import fit_popularity_prior
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig
from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.config import DeviceConfig, ModelConfig
from fedseqrec.models.device import resolve_device
from fedseqrec.models.registry import build_model, model_config_for

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("NDCG@10", "HR@10", "MRR@10")
PROTOCOL = "full-history-removed"
# One preset per model and family of data: (model options, fitting options), as `fedseqrec train` flags.
# amazon: chosen on Beauty's validation split. Regularisation tuned for ml-100k's 943 users (weight decay 1.0, label
# smoothing 0.2) holds 22k users back; tied item embeddings halve the item parameters, which a catalogue of 12k items
# seen 16 times each needs. SASRec: the learning rate falling linearly to 0 over 36 epochs, positions counted back from
# the last item (the SASRec authors' left padding), a causal low-pass filter mixed into each block (BSARec's).
# BERT4Rec: its paper's ρ = 0.6 and dropout 0.1, a lower rate for a post-LN BERT, weight decay 0.1.
AMAZON_MODEL = {"loss": "ce", "label_smoothing": 0.0, "tie_items": True}
AMAZON_FIT = {"weight_decay": 0.0, "lr": 0.002, "batch_size": 128, "batching": "length"}
PRESETS: dict[str, dict[str, tuple[dict, dict]]] = {
    "amazon": {
        "pop": ({}, {}),
        "sasrec": (
            {**AMAZON_MODEL, "positions": "from-end", "low_pass": 0.3, "low_pass_width": 10},
            {**AMAZON_FIT, "lr_schedule": "linear", "epochs": 36, "popularity_prior": "auto"},
        ),
        "gru4rec": (AMAZON_MODEL, AMAZON_FIT),
        "lstm": (AMAZON_MODEL, AMAZON_FIT),
        "bert4rec": (
            {**AMAZON_MODEL, "mask_ratio": 0.6, "dropout": 0.1},
            {**AMAZON_FIT, "lr": 0.0005, "weight_decay": 0.1},
        ),
    },
    # movielens: `fedseqrec train`'s defaults (chosen on ml-100k's validation split); SASRec: RecBole's setting,
    # every prefix an example (--window prefixes), no weight decay or label smoothing, batches of 2,048, lr 0.001
    # (seed 0's validation NDCG@10 0.0683 against the defaults' 0.0633)
    "movielens": {
        "pop": ({}, {}),
        "sasrec": (
            {"label_smoothing": 0.0},
            {"window": "prefixes", "weight_decay": 0.0, "lr": 0.001, "batch_size": 2048},
        ),
        "gru4rec": ({}, {}),
        "lstm": ({}, {}),
        "bert4rec": ({}, {"warmup_steps": 100}),
    },
}
PUBLISHED = {  # ../shared/anchors/README.md: test NDCG@10 / HR@10 under this protocol
    "beauty": {
        "S3-Rec repository: GRU4Rec": (0.0137, 0.0283),
        "S3-Rec repository: BERT4Rec": (0.0170, 0.0347),
        "S3-Rec repository: SASRec (binary CE)": (0.0318, 0.0605),
        "ICLRec (2022)": (0.0403, 0.0744),
        "eSASRec: SASRec, sampled softmax (2025)": (0.0531, 0.0921),
        "BSARec (2024), state of the art": (0.0611, 0.1008),
    },
    "ml-100k": {"RecBole 1.2.1 SASRec, measured here (protocol full, not history-removed)": (0.0581, 0.1188)},
}


def run_seed(name: str, data: str, preset: str, seed: int, options: argparse.Namespace, tmp: Path) -> dict:
    model_options, fit = PRESETS[preset][name]
    protocol = "full" if preset == "movielens" else PROTOCOL
    train = TrainConfig(
        max_seconds=options.max_seconds,
        threads=options.threads,
        hardware=DeviceConfig(options.device),
        evaluation=EvaluationConfig(protocol=protocol, eval_every=options.eval_every),
        **fit,
    )
    data_cfg, model_cfg, out = DataConfig(data=data, seed=seed), ModelConfig(name=name, **model_options), tmp / name
    curve: list[dict] = []
    held: dict = {}
    started = time.perf_counter()

    def on_data(ds) -> None:
        held["ds"] = ds

    def on_epoch(record: dict) -> None:
        if "valid" not in record or record["best"]["epoch"] != record["epoch"]:
            return
        measuring = time.perf_counter()
        ds = held["ds"]
        model = build_model(name, model_config_for(ds.sequences, model_cfg), ds.sequences)
        model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
        model.to(resolve_device(options.device))
        measure = {"max_len": model_cfg.max_len, "protocol": protocol}
        if prior_beta(fit.get("popularity_prior", "0")) != 0:  # what the run would release if it stopped here
            fit_popularity_prior(model, ds, fit["popularity_prior"], "NDCG@10", measure)
        test = evaluate(model, ds.sequences, ds.split, "test", **measure)
        curve.append(
            {
                "epoch": record["epoch"],
                "train_seconds": record["train_seconds"],
                # the run's own wall clock: its training and validation, not this script's test evaluations
                "wall_seconds": round(measuring - started - held.get("measured", 0.0), 1),
                "valid_NDCG@10": round(record["valid"]["NDCG@10"], 4),
                "test_NDCG@10": round(test["NDCG@10"], 4),
            }
        )
        held["measured"] = held.get("measured", 0.0) + time.perf_counter() - measuring

    if name == "pop":
        result = train_centralized(data_cfg, model_cfg, train, out)
    else:
        result = train_centralized(data_cfg, model_cfg, train, out, progress=on_epoch, on_data=on_data)
    config = json.loads((out / "config.json").read_text())
    return {
        "seed": seed,
        "test": {k: round(result["test"][k], 4) for k in KEYS},
        "valid": {k: round(result["valid"][k], 4) for k in KEYS},
        "train_seconds": result.get("train_seconds"),
        "epochs": result.get("epochs_run"),
        "best_epoch": result.get("best_epoch"),
        "seconds_per_epoch": result.get("seconds_per_epoch"),
        "stopped": result.get("stopped"),
        "popularity_prior": result.get("popularity_prior"),
        "params": result.get("params"),
        "device": result.get("device", "cpu"),
        "threads": options.threads,  # the run's budget and cores: rows measured apart may differ in them
        "max_seconds": options.max_seconds,
        "curve": curve,
        "flags": {**model_options, **fit},
        "protocol": config["train"]["evaluation"]["protocol"],
    }


def summary(name: str, runs: list[dict]) -> dict:
    return {
        "model": name,
        "seeds": [r["seed"] for r in runs],
        "test": {k: spread([r["test"][k] for r in runs]) for k in KEYS},
        "valid": {k: spread([r["valid"][k] for r in runs]) for k in KEYS},
        "train_seconds": spread([r["train_seconds"] for r in runs]),
        "runs": runs,
    }


def table(dataset: str, rows: list[dict]) -> str:
    header = "| model | test NDCG@10 (mean ± std) | test HR@10 | seeds | training seconds |"
    lines = [header, "|---|---:|---:|---|---:|"]
    for row in rows:
        ndcg, hr = row["test"]["NDCG@10"], row["test"]["HR@10"]
        seconds = row["train_seconds"]["mean"]
        lines.append(
            f"| {row['model']} | {ndcg['mean']:.4f} ± {ndcg['std']:.4f} | {hr['mean']:.4f} ± {hr['std']:.4f} | "
            f"{len(row['seeds'])} | {seconds if seconds is not None else '–'} |"
        )
    for source, (ndcg, hr) in PUBLISHED.get(dataset, {}).items():
        lines.append(f"| published: {source} | {ndcg:.4f} | {hr:.4f} | – | – |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="the rows' name (beauty: printed beside the published figures)")
    parser.add_argument("file", help="what `fedseqrec train --data` reads")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="amazon")
    parser.add_argument("--models", nargs="+", default=["pop", "sasrec", "gru4rec", "lstm", "bert4rec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (SEED/MODEL)")
    options = parser.parse_args()
    out = options.out or ROOT / "benchmarks" / "results" / f"papers_{options.dataset}.json"
    command = (
        f"python benchmarks/papers.py {options.dataset} FILE --preset {options.preset} "
        f"--models {' '.join(options.models)} --seeds {' '.join(map(str, options.seeds))} "
        f"--max-seconds {options.max_seconds:g} --threads {options.threads}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = options.keep or Path(tmp)
        for name in options.models:
            runs = []
            for seed in options.seeds:
                runs.append(run_seed(name, options.file, options.preset, seed, options, folders / str(seed)))
                print(json.dumps({"model": name, **{k: v for k, v in runs[-1].items() if k != "curve"}}), flush=True)
            rows.append({**summary(name, runs), "command": command})  # (rows measured apart keep their own)
    report = json.loads(out.read_text()) if out.exists() else {"rows": []}
    measured = {row["model"] for row in rows}
    report["rows"] = [r for r in report["rows"] if r["model"] not in measured] + rows
    report.update(
        dataset=options.dataset,
        file=Path(options.file).name,
        preset=options.preset,
        presets=PRESETS[options.preset],
        published=PUBLISHED.get(options.dataset, {}),
        machine={
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": options.threads,
        },
        command=command,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(options.dataset, report["rows"]))


if __name__ == "__main__":
    main()
