"""``fedseqrec train``: centralized training, the baseline every federated run is compared with.

AdamW, early stopping on validation NDCG@10, the best weights kept (weights only), per-epoch metrics as JSON
lines and a final ``metrics.json`` with validation and test metrics of the best epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from fedseqrec.centralized.config import TrainConfig, prior_beta
from fedseqrec.centralized.popularity_prior import fit_popularity_prior
from fedseqrec.data.canaries import SEALED, seal
from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.record import run_folder_config
from fedseqrec.data.splits import training_item_counts, training_items
from fedseqrec.data.tasks import task_of
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate, poisoning_figures, popularity_baseline
from fedseqrec.evaluation.metrics import catalogue_note
from fedseqrec.jsonio import dumps
from fedseqrec.models.batching import slate_batches, training_examples, training_loader
from fedseqrec.models.checkpoint import save_checkpoint, save_weights
from fedseqrec.models.config import BASELINES, ModelConfig
from fedseqrec.models.cooccurrence import ItemCooccurrence
from fedseqrec.models.device import check_precision, device_name, resolve_device
from fedseqrec.models.optim import LinearSchedule, adamw
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.models.text_match import TextMatch
from fedseqrec.models.training import train_epoch
from fedseqrec.options import check
from fedseqrec.privacy.config import default_delta
from fedseqrec.privacy.cooccurrence import private_cooccurrence, public_supported_cooccurrence
from fedseqrec.privacy.popularity import private_popularity

SPLITS = ("valid", "test")
EpochProgress = Callable[[dict], None]  # called after every epoch with its record (see _fit)
StopRule = Callable[[dict], str | None]  # after every epoch: why to stop now (``fedseqrec tune``'s pruning), or None


def train_centralized(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    progress: EpochProgress | None = None,
    on_data: Callable[[Dataset], None] | None = None,
    stop_rule: StopRule | None = None,
) -> dict:
    """``progress``: called after every epoch; ``on_data``: called once the data is loaded (before training);
    ``stop_rule``: asked after every epoch whether to stop (the run then ends as after --patience)."""
    check(cfg)
    model_cfg.check_options()
    if model_cfg.name not in BASELINES:
        model_cfg.check_training(cfg.window, private=False)
    prior = prior_beta(cfg.popularity_prior) != 0
    if prior and (model_cfg.name in BASELINES or not task_of(data_cfg.task).ranks_items):
        raise UserError(
            f"--popularity-prior {cfg.popularity_prior}: for the trained models that rank items (sasrec, gru4rec, "
            f"lstm, bert4rec); {model_cfg.name} under --task {data_cfg.task} has no item scorer to add it to"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose a folder for the results")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(data_cfg.seed)
    data_cfg = data_cfg.with_audit_seed()  # (recorded in config.json with the results)
    ds = load_dataset(data_cfg)
    if on_data is not None:
        on_data(ds)
    model_cfg = model_config_for(ds.sequences, model_cfg)
    if model_cfg.name in BASELINES:
        model_cfg.validate()
        if model_cfg.name == "cooc":
            results = _cooccurrence_results(ds, model_cfg, cfg, out, data_cfg.seed)
        else:
            results = (_popularity_results if model_cfg.name == "pop" else _text_match_results)(ds, model_cfg, cfg)
        return _write_results(out, results, data_cfg, model_cfg, cfg, ds.sequences.n_items)
    device = resolve_device(cfg.hardware.device)
    check_precision(device, cfg.hardware.precision)
    model = build_model(model_cfg.name, model_cfg, ds.sequences).to(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / SEALED).unlink(missing_ok=True)  # a new run in an old folder: its own coins
    seal(out, ds.audit)
    history, train_seconds, best, stopped = _fit(model, ds, model_cfg, cfg, out, progress, data_cfg, stop_rule)
    model.load_state_dict(torch.load(out / "model.pt", map_location=device, weights_only=True))
    calibration = None
    if hasattr(model, "fit_calibration"):  # ad models: Platt scaling on the validation slates
        calibration = model.fit_calibration(slate_batches(ds.sequences, ds.split, "valid", max_len=model_cfg.max_len))
    options = {"max_len": model_cfg.max_len, "protocol": cfg.evaluation.protocol}
    prior_record = None
    if prior:
        selection = task_of(data_cfg.task).selection
        prior_record = fit_popularity_prior(model, ds, cfg.popularity_prior, selection, options)
    save_checkpoint(out, model, model_cfg.name, ds.sequences)
    results = {
        "model": model_cfg.name,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped": stopped,
        "valid": evaluate(model, ds.sequences, ds.split, "valid", **options),
        "test": evaluate(model, ds.sequences, ds.split, "test", **options),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(1, len(history)), 3),
        "device": device_name(device),
        **({"calibration": calibration} if calibration is not None else {}),
        **({"popularity_prior": prior_record} if prior_record is not None else {}),
        **poisoning_figures(model, ds.sequences, ds.split, ds.options, model_cfg.max_len),
    }
    return _write_results(out, results, data_cfg, model_cfg, cfg, ds.sequences.n_items)


def _fit(
    model, ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, progress, data_cfg: DataConfig, stop_rule
):
    """Epochs until ``--epochs``, ``--patience`` or ``--max-seconds`` (checked after every step, so training
    ends within one step of the limit): (history, training seconds, best, why it stopped early or None)."""
    seed, chosen = data_cfg.seed, task_of(data_cfg.task).selection
    windows = training_examples(ds.sequences, ds.split, None, model_cfg.max_len, cfg.window, seed)
    loader = training_loader(windows, cfg.batch_size, seed, cfg.by_length)
    optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(loader) if cfg.lr_schedule == "linear" else None
    schedule = LinearSchedule(optimizer, cfg.warmup_steps, total) if cfg.warmup_steps or total else None
    best = {"epoch": 0, "score": -1.0}
    history, train_seconds, stale, stopped = [], 0.0, 0, None
    with (out / "metrics.jsonl").open("w") as log:
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            left = None if cfg.max_seconds is None else cfg.max_seconds - train_seconds
            loss, _ = train_epoch(
                model,
                loader,
                optimizer,
                windows.batch_of,
                on_step=schedule,
                stop=_time_limit(start, left),
                packed=True,
                precision=cfg.hardware.precision,
            )
            train_seconds += time.perf_counter() - start
            record = {"epoch": epoch, "loss": round(loss, 5), "train_seconds": round(train_seconds, 2)}
            out_of_time = cfg.max_seconds is not None and train_seconds >= cfg.max_seconds
            if epoch % cfg.evaluation.eval_every == 0 or epoch == cfg.epochs or out_of_time:
                record["valid"] = evaluate(
                    model, ds.sequences, ds.split, "valid", max_len=model_cfg.max_len, protocol=cfg.evaluation.protocol
                )
                score = record["valid"][chosen]
                if score > best["score"]:
                    best, stale = {"epoch": epoch, "score": score}, 0
                    save_weights(out / "model.pt", model)
                else:
                    stale += 1
            history.append(record)
            log.write(dumps(record) + "\n")
            log.flush()
            if progress is not None:
                progress({**record, "epochs": cfg.epochs, "best": dict(best)})
            if out_of_time:
                stopped = (
                    f"--max-seconds {cfg.max_seconds:g} reached in epoch {epoch} ({train_seconds:.1f} s of training)"
                )
            elif stale >= cfg.patience:
                stopped = f"no better validation {chosen} in {cfg.patience} evaluations (--patience)"
            elif stop_rule is not None and epoch < cfg.epochs:
                stopped = stop_rule(record)
            if stopped:
                break
    return history, train_seconds, best, stopped


def _time_limit(start: float, seconds: float | None) -> Callable[[], bool] | None:
    if seconds is None:
        return None
    return lambda: time.perf_counter() - start >= seconds


def _popularity_results(ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig) -> dict:
    start = time.perf_counter()
    seq, split, protocol = ds.sequences, ds.split, cfg.evaluation.protocol
    if cfg.pop_epsilon is None:
        results = popularity_baseline(seq, split, model_cfg.max_len, protocol)
    else:
        delta = default_delta(seq.n_users)
        model, record = private_popularity(seq, split, cfg.pop_epsilon, delta, cfg.pop_items)
        results = {w: evaluate(model, seq, split, w, max_len=model_cfg.max_len, protocol=protocol) for w in SPLITS}
        results["privacy"] = record
    return {"model": "pop", **results, "params": 0, "train_seconds": round(time.perf_counter() - start, 3)}


def _cooccurrence_results(ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, seed: int) -> dict:
    """``seed``: the run's, which chooses the public users."""
    start = time.perf_counter()
    seq, split, cooc = ds.sequences, ds.split, cfg.cooccurrence
    results, public_only = {}, None
    cooc.check()
    if cooc.cooc_epsilon is None:
        histories = (seq.sequence(u)[: split.train_end[u]] for u in range(1, seq.n_users + 1))
        prior = training_item_counts(seq, split) * 1e-6  # orders the unpaired
        model = ItemCooccurrence.counted(model_cfg, histories, cooc.cooc_window, prior)
    elif cooc.cooc_public_users > 0:
        epsilon, delta, share = cooc.cooc_epsilon, default_delta(seq.n_users), cooc.cooc_public_users
        model, results["privacy"], public_only = public_supported_cooccurrence(
            seq, split, epsilon, delta, share, seed, cooc.cooc_window, model_cfg, protocol=cfg.evaluation.protocol
        )
    else:
        model, results["privacy"] = private_cooccurrence(
            seq,
            split,
            cooc.cooc_epsilon,
            default_delta(seq.n_users),
            cooc.items(),
            cooc.cooc_window,
            model_cfg,
            cooc.cooc_item_noise,
        )
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, "cooc", seq)  # the release itself: what recommend and serve load
    options = {"max_len": model_cfg.max_len, "protocol": cfg.evaluation.protocol}
    results.update({w: evaluate(model, seq, split, w, **options) for w in SPLITS})
    if public_only is not None:  # as a federation's report keeps the public users' model: the private gain beside it
        results["initial"] = {w: evaluate(public_only, seq, split, w, **options) for w in SPLITS}
    return {"model": "cooc", **results, "params": 0, "train_seconds": round(time.perf_counter() - start, 3)}


def _text_match_results(ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig) -> dict:
    start = time.perf_counter()
    seq, split = ds.sequences, ds.split
    if not seq.has_queries:
        raise UserError(f"{ds.source}: text-match ranks items by a search's words, and no event has a query")
    model = TextMatch(seq.tokens.items, training_items(seq, split))
    options = {"max_len": model_cfg.max_len, "protocol": cfg.evaluation.protocol}
    results = {w: evaluate(model, seq, split, w, **options) for w in SPLITS}
    return {"model": "text-match", **results, "params": 0, "train_seconds": round(time.perf_counter() - start, 3)}


def _write_results(
    out: Path, results: dict, data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, n_items: int
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    note = catalogue_note(n_items) if task_of(data_cfg.task).ranks_items else None
    if note:
        results["notes"] = [*results.get("notes", []), note]
    if "privacy" in results:  # the private popularity baseline: its release, as the privacy reports record one
        (out / "privacy_report.json").write_text(dumps(results["privacy"], indent=2) + "\n")
    results["protocol"] = cfg.evaluation.protocol
    results["task"] = data_cfg.task
    config = run_folder_config(
        data=data_cfg.data,
        config={
            "data": {**asdict(data_cfg), "shop": asdict(data_cfg.shop)},
            "model": model_cfg.to_dict(),
            "train": asdict(cfg),
        },
    )
    (out / "config.json").write_text(dumps(config, indent=2) + "\n")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(dumps(results, indent=2) + "\n")
    tmp.replace(out / "metrics.json")
    return results
