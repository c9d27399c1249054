"""What a client does with its own users: load them, train the global model on them, evaluate it on them.

Nothing here knows Flower; ``client_app.py`` turns messages into these calls.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.export import load_client_export
from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.evaluation.metrics import MetricSums
from fedseqrec.models.base import ModelConfig, SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.registry import build_model
from fedseqrec.models.training import train_epoch
from fedseqrec.runconfig import FederationConfig


@functools.lru_cache(maxsize=2)
def _load(key: str) -> Dataset:
    values = json.loads(key)
    shop = values.pop("shop")
    cfg = DataConfig(**values)
    cfg.shop = replace(cfg.shop, **shop)
    return load_dataset(cfg)


def cached_dataset(cfg: DataConfig) -> Dataset:
    """Loading is deterministic, so simulated clients sharing a worker process share one read-only copy (a
    cache, not client state: nothing a client learns is kept here)."""
    return _load(json.dumps(asdict(cfg), sort_keys=True))


def model_config_for(data: SequenceData, cfg: FederationConfig) -> ModelConfig:
    return ModelConfig.from_dict(
        {**cfg.model_config().to_dict(), "n_items": data.n_items, "n_events": len(data.vocab.events) - 1}
    )


@dataclass
class ClientData:
    client: int  # partition id: the client's identity in the federation
    sequences: SequenceData
    split: Split
    users: np.ndarray  # user ids this client holds


def partition_size(cfg: FederationConfig, num_partitions: int | None) -> DataConfig:
    """The data config a federation of ``num_partitions`` clients partitions by: ``--clients`` if set, else one
    client per SuperNode (iid and dirichlet); per-user and attribute partitions size themselves."""
    data_cfg = cfg.data_config()
    if data_cfg.clients is None and cfg.partition in ("iid", "dirichlet"):
        data_cfg.clients = num_partitions
    return data_cfg


def load_exported_client(path: Path, cfg: FederationConfig) -> ClientData:
    """A deployed client's own folder from `fedseqrec data export-partitions`: all of its users are its own."""
    export = load_client_export(path)
    expected = cfg.clients if cfg.clients is not None and cfg.partition != "attribute" else None
    if expected is not None and expected != export.num_partitions:
        raise UserError(
            f"data-path {path}: is client {export.client} of {export.num_partitions}, but the run has "
            f"{expected} clients (--clients); export the partitions again with --clients {expected}"
        )
    users = np.arange(1, export.sequences.n_users + 1, dtype=np.int64)
    return ClientData(export.client, export.sequences, export.split, users)


def load_client_data(cfg: FederationConfig, partition_id: int, num_partitions: int) -> ClientData:
    ds = cached_dataset(partition_size(cfg, num_partitions))
    clients = ds.partition.clients()
    n_clients = cfg.clients if cfg.clients is not None and cfg.partition != "attribute" else len(clients)
    if num_partitions != n_clients or not 0 <= partition_id < n_clients:
        raise UserError(
            f"the {cfg.partition} partition of {cfg.data} has {n_clients} clients, but this federation has "
            f"{num_partitions} nodes (partition id {partition_id}): set num-supernodes to {n_clients}"
        )
    users = clients[partition_id] if partition_id < len(clients) else np.empty(0, dtype=np.int64)
    return ClientData(partition_id, ds.sequences, ds.split, users)


def build_global_model(data: SequenceData, cfg: FederationConfig, state: dict | None = None) -> SequentialRecommender:
    model = build_model(cfg.model, model_config_for(data, cfg))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(
                f"the global model does not fit this client's data ({data.n_items} items, "
                f"{len(data.vocab.events) - 1} event types): were the server's data and this client's folder "
                f"prepared from the same source with the same options? ({str(err).splitlines()[-1].strip()})"
            ) from err
    return model


def client_seed(seed: int, server_round: int, client: int) -> int:
    """Every client's randomness in every round, from the run seed alone: reruns and resumed runs match."""
    return int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0])


@dataclass
class TrainResult:
    examples: int  # users with a training target: the FedAvg weight
    loss: float
    steps: int
    seconds: float


def train_locally(
    model: SequentialRecommender, data: ClientData, cfg: FederationConfig, server_round: int
) -> TrainResult:
    start = time.perf_counter()
    seed = client_seed(cfg.seed, server_round, data.client)
    torch.manual_seed(seed)
    windows = TrainingWindows(
        data.sequences, data.split, data.users, model.cfg.max_len, cfg.window == "random", seed=seed
    )
    if len(windows) == 0:
        return TrainResult(0, float("nan"), 0, time.perf_counter() - start)
    loader = DataLoader(windows, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    penalty = _proximal_term(model, cfg.proximal_mu) if cfg.strategy == "fedprox" else None
    losses, steps = [], 0
    epochs = cfg.local_epochs if cfg.local_steps is None else None
    while (epochs is not None and len(losses) < epochs) or (epochs is None and steps < cfg.local_steps):
        left = None if epochs is not None else cfg.local_steps - steps
        loss, taken = train_epoch(model, loader, optimizer, windows.batch_of, max_steps=left, penalty=penalty)
        losses.append((loss, taken))
        steps += taken
    mean_loss = sum(loss * n for loss, n in losses) / max(1, steps)
    return TrainResult(len(windows), mean_loss, steps, time.perf_counter() - start)


def _proximal_term(model: SequentialRecommender, mu: float):
    """FedProx: (mu / 2) * ||w - w_global||^2, w_global being the weights the round started from."""
    anchors = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def penalty() -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))

    return penalty


def evaluate_locally(model: SequentialRecommender, data: ClientData, cfg: FederationConfig, which: str) -> MetricSums:
    if len(data.users) == 0:
        return MetricSums()
    return evaluate_sums(
        model, data.sequences, data.split, which, users=data.users, max_len=model.cfg.max_len, protocol=cfg.protocol
    )
