"""``fedseqrec train`` (centralized training, the baseline of every federated run) and ``fedseqrec evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.cli.common import (
    add_command,
    add_config_option,
    add_data_options,
    add_device_option,
    data_config,
    model_config,
    unset_defaults,
)
from fedseqrec.cli.report import run_audit
from fedseqrec.data.cleaning import cleaning_summary
from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.tasks import Task, task_of
from fedseqrec.errors import UserError
from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.models.config import ModelConfig
from fedseqrec.options import add_options, from_args
from fedseqrec.results.folder import recorded_data, recorded_protocol


class EpochPrinter:
    """Progress of ``train``: a bar on a terminal, one plain line per epoch in a log."""

    def __init__(self, model: str, task: Task, stream=None):
        stream = stream or sys.stderr
        self.model, self.stream, self.bar = model, stream, None
        self.chosen = task.selection
        if stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=f"train {model}", unit="epoch", file=stream)

    def __call__(self, record: dict) -> None:
        chosen = self.chosen
        valid = record.get("valid", {}).get(chosen)
        best = record["best"]
        if self.bar is not None:
            self.bar.total = record["epochs"]
            self.bar.update(1)
            shown = {"loss": f"{record['loss']:.3f}", "best": f"{best['score']:.4f}"}
            if valid is not None:
                shown[chosen] = f"{valid:.4f}"
            self.bar.set_postfix(shown)
            return
        line = f"epoch {record['epoch']:>3}/{record['epochs']}  loss {record['loss']:.4f}"
        if valid is not None:
            line += f"  valid {chosen} {valid:.4f} (best {best['score']:.4f}, epoch {best['epoch']})"
        print(f"{line}  {record['train_seconds']:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say_cleaning(ds: Dataset) -> None:
    summary = cleaning_summary(ds.cleaning)
    if summary:
        print(f"cleaning: {summary}", file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """centralized training (the baseline for federated runs)

    Train a sequence recommender on all users at once: AdamW, early stopping on the task's validation metric
    (NDCG@10; the click AUC for --task ctr), best weights in --out/model.pt, per-epoch metrics in
    --out/metrics.jsonl and final validation and test metrics in --out/metrics.json. Progress: a bar on a
    terminal, a line per epoch otherwise.
    """
    from fedseqrec.centralized.training import train_centralized  # torch: not for building the parsers

    model, data = model_config(args), data_config(args, truncate=False)
    out = Path(args.out or f"runs/train-{model.name}")
    task = task_of(data.task)
    printer = EpochPrinter(model.name, task)
    try:
        results = train_centralized(data, model, from_args(TrainConfig(), args), out, printer, say_cleaning)
    finally:
        printer.close()
    test, valid = results["test"], results["valid"]
    if results.get("stopped"):
        print(f"stopped: {results['stopped']}")
    if "popularity_prior" in results:
        prior = results["popularity_prior"]
        print(f"popularity prior: β = {prior['beta']:g} added to the item scores ({prior['chosen_by']})")
    chosen = task.selection
    print(
        f"{model.name}: test {task.headline_of(test)}  (valid {chosen} {valid[chosen]:.4f}; "
        f"{results['params']:,} parameters, {results['train_seconds']:.1f} s training)"
    )
    for note in results.get("notes", []):
        print(note)
    print(f"results in {out.resolve()}")
    return run_audit(out) if data.audited else 0


def checkpoint_data(folder: Path, args: argparse.Namespace) -> DataConfig:
    """The data a checkpoint was trained on (its ``config.json``), with the flags given on the command line."""
    if not folder.is_dir():
        raise UserError(f"--checkpoint {folder}: no such folder (give the folder `fedseqrec train --out` wrote)")
    given = getattr(args, "data", None)  # --data: where the run's data is now
    recorded = recorded_data(folder, given)
    return from_args(recorded, args, exclude=("max_len", "data"))


def results_table(results: dict, task: Task) -> str:
    names = task.table
    lines = ["| split | " + " | ".join(names) + " |", "|---" + "|---:" * len(names) + "|"]
    for which in ("valid", "test"):
        lines.append(f"| {which} | " + " | ".join(f"{results[which][m]:.4f}" for m in names) + " |")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """evaluate a saved model

    Validation and test metrics of a checkpoint folder written by `fedseqrec train`, on the data recorded in its
    config.json (or on --data, which must have the item vocabulary the model was trained on).
    """
    from fedseqrec.evaluation.evaluator import evaluate  # torch: not for building the parsers
    from fedseqrec.models.checkpoint import load_checkpoint

    folder = Path(args.checkpoint)
    data = checkpoint_data(folder, args)
    ds = load_dataset(data)
    name, model = load_checkpoint(folder, ds.sequences, device=args.device)
    protocol = getattr(args, "protocol", None) or recorded_protocol(folder)
    options = {"max_len": model.cfg.max_len, "protocol": protocol}
    results = {
        "model": name,
        "protocol": protocol,
        "data": data.data,
        "valid": evaluate(model, ds.sequences, ds.split, "valid", **options),
        "test": evaluate(model, ds.sequences, ds.split, "test", **options),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    task = task_of(data.task)
    what = f"{protocol} ranking, " if task.ranks_items else ""
    print(f"{name} from {folder.resolve()} on {data.data} ({what}{ds.split.n_test} test {task.targets})")
    print(results_table(results, task))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = add_command(commands, "train", cmd_train)
    add_data_options(train, truncate=False, partition=False)
    add_options(train, ModelConfig())
    add_options(train, TrainConfig())
    train.add_argument("--out", default=None, metavar="DIR", help="results folder (default: runs/train-MODEL)")
    add_config_option(train)

    evaluation = add_command(commands, "evaluate", cmd_evaluate)
    add_data_options(evaluation, truncate=False, partition=False)
    unset_defaults(evaluation, DataConfig(), absent=argparse.SUPPRESS)
    evaluation.add_argument("--checkpoint", required=True, metavar="DIR", help="folder holding model.pt and model.json")
    add_options(evaluation, EvaluationConfig(), exclude=("eval_every",))
    unset_defaults(evaluation, EvaluationConfig(), names=("protocol",), absent=argparse.SUPPRESS)
    evaluation.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_device_option(evaluation)
