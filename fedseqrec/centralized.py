"""``fedseqrec train``: centralized training, the baseline every federated run is compared with.

AdamW, early stopping on validation NDCG@10, the best weights kept (weights only), per-epoch metrics as JSON
lines and a final ``metrics.json`` with validation and test metrics of the best epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.splits import training_items
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.checkpoint import save_checkpoint, save_weights
from fedseqrec.models.config import ModelConfig, TrainConfig
from fedseqrec.models.pop import Popularity
from fedseqrec.models.registry import build_model
from fedseqrec.models.training import train_epoch

SELECTION_METRIC = "NDCG@10"


def model_config_for(ds: Dataset, base: ModelConfig) -> ModelConfig:
    return ModelConfig.from_dict(
        {**base.to_dict(), "n_items": ds.sequences.n_items, "n_events": len(ds.sequences.vocab.events) - 1}
    )


def train_centralized(
    data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, progress: bool = True
) -> dict:
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(data_cfg.seed)
    ds = load_dataset(data_cfg)
    model_cfg = model_config_for(ds, model_cfg)
    if cfg.model == "pop":
        model_cfg.validate()
        return _write_results(out, _popularity_results(ds, model_cfg, cfg), data_cfg, model_cfg, cfg)
    model = build_model(cfg.model, model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    history, train_seconds, best = _fit(model, ds, model_cfg, cfg, out, progress, data_cfg.seed)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    save_checkpoint(out, model, cfg.model, ds.sequences)
    options = {"max_len": model_cfg.max_len, "protocol": cfg.eval_protocol}
    results = {
        "model": cfg.model,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "valid": evaluate(model, ds.sequences, ds.split, "valid", **options),
        "test": evaluate(model, ds.sequences, ds.split, "test", **options),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(1, len(history)), 3),
    }
    return _write_results(out, results, data_cfg, model_cfg, cfg)


def _fit(model, ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, progress: bool, seed: int):
    windows = TrainingWindows(
        ds.sequences, ds.split, max_len=model_cfg.max_len, random_window=cfg.random_window, seed=seed
    )
    loader = DataLoader(windows, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = {"epoch": 0, "score": -1.0}
    history, train_seconds, stale = [], 0.0, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {cfg.model}", unit="epoch", disable=not progress or None)
    with (out / "metrics.jsonl").open("w") as log:
        for epoch in bar:
            start = time.perf_counter()
            loss, _ = train_epoch(model, loader, optimizer, windows.batch_of)
            train_seconds += time.perf_counter() - start
            record = {"epoch": epoch, "loss": round(loss, 5), "train_seconds": round(train_seconds, 2)}
            out_of_time = cfg.max_seconds is not None and train_seconds >= cfg.max_seconds
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time:
                record["valid"] = evaluate(
                    model, ds.sequences, ds.split, "valid", max_len=model_cfg.max_len, protocol=cfg.eval_protocol
                )
                score = record["valid"][SELECTION_METRIC]
                if score > best["score"]:
                    best, stale = {"epoch": epoch, "score": score}, 0
                    save_weights(out / "model.pt", model)
                else:
                    stale += 1
                bar.set_postfix(loss=f"{loss:.3f}", ndcg10=f"{score:.4f}", best=f"{best['score']:.4f}")
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            if stale >= cfg.patience or out_of_time:
                break
    return history, train_seconds, best


def _popularity_results(ds: Dataset, model_cfg: ModelConfig, cfg: TrainConfig) -> dict:
    seq, split = ds.sequences, ds.split
    start = time.perf_counter()
    model = Popularity(seq.n_items).fit(training_items(seq, split))
    seconds = time.perf_counter() - start
    options = {"max_len": model_cfg.max_len, "protocol": cfg.eval_protocol}
    return {
        "model": "pop",
        "valid": evaluate(model, seq, split, "valid", **options),
        "test": evaluate(model, seq, split, "test", **options),
        "params": 0,
        "train_seconds": round(seconds, 3),
    }


def _write_results(out: Path, results: dict, data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results["protocol"] = cfg.eval_protocol
    config = {
        "data": {**asdict(data_cfg), "shop": asdict(data_cfg.shop)},
        "model": model_cfg.to_dict(),
        "train": asdict(cfg),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "metrics.json")
    return results
