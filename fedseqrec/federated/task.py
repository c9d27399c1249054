"""The work on a client's users, shared by the ClientApp (training, evaluation) and the ServerApp (the global
model, the server's copy of the data): load them, build the global model, train it on them, evaluate it on them.

Nothing here knows Flower; ``client/client_app.py`` turns messages into these calls.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedseqrec.data.dataset import DataConfig, Dataset, load_dataset
from fedseqrec.data.export import load_client_export
from fedseqrec.data.partition import ClientData
from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import training_item_counts
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.evaluation.metrics import MetricSums
from fedseqrec.federated.config import LocalTrainingConfig, RunConfig
from fedseqrec.models.base import ModelConfig, SequentialRecommender
from fedseqrec.models.batching import training_examples, training_loader
from fedseqrec.models.config import DeviceConfig
from fedseqrec.models.device import check_precision, resolve_device
from fedseqrec.models.optim import adamw, optimizer_moments, restore_moments
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.models.training import TrainResult, round_seed, train_epoch


@functools.lru_cache(maxsize=2)
def _load(key: str) -> Dataset:
    return load_dataset(DataConfig.from_dict(json.loads(key)))


def cached_dataset(cfg: DataConfig) -> Dataset:
    """Loading is deterministic, so simulated clients sharing a worker process share one read-only copy (a
    cache, not client state: nothing a client learns is kept here)."""
    return _load(json.dumps(cfg.to_dict(), sort_keys=True))


def server_data(cfg: RunConfig) -> Dataset:
    """The server's copy: the item vocabulary and (for centralized evaluation) every user's held-out events; not
    the partition, which each client computes for itself."""
    return cached_dataset(replace(cfg.data, partition=None, clients=None))


def sized_partition(cfg: RunConfig, num_partitions: int | None) -> DataConfig:
    """The data config a federation of ``num_partitions`` clients partitions by: ``--clients`` if set, else one
    client per SuperNode (iid and dirichlet); per-user and attribute partitions size themselves."""
    data = cfg.data
    if data.clients is None and data.partition in ("iid", "dirichlet"):
        return replace(data, clients=num_partitions)
    return data


def largest_client(cfg: RunConfig, num_partitions: int) -> int | None:
    """The most users one client of the run's partition holds (None: the server cannot compute the partition, e.g.
    a deployment whose nodes hold exported folders)."""
    try:
        partition = cached_dataset(sized_partition(cfg, num_partitions)).partition
    except (UserError, OSError):
        return None
    return int(np.bincount(partition.client_of_user[1:]).max()) if partition is not None else None


def expected_clients(cfg: RunConfig) -> int | None:
    """The number of clients the run asks for, where it fixes one (attribute partitions find their own)."""
    return cfg.data.clients if cfg.data.clients is not None and cfg.data.partition != "attribute" else None


def load_exported_client(path: Path, cfg: RunConfig) -> ClientData:
    """A deployed client's own folder from `fedseqrec data export-partitions`: all of its users are its own."""
    export = load_client_export(path)
    expected = expected_clients(cfg)
    if expected is not None and expected != export.num_partitions:
        raise UserError(
            f"data-path {path}: is client {export.client} of {export.num_partitions}, but the run has "
            f"{expected} clients (--clients); export the partitions again with --clients {expected}"
        )
    users = np.arange(1, export.sequences.n_users + 1, dtype=np.int64)
    return ClientData(export.client, export.sequences, export.split, users)


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    ds = cached_dataset(sized_partition(cfg, num_partitions))
    clients = ds.partition.clients()
    n_clients = expected_clients(cfg) or len(clients)
    if num_partitions != n_clients or not 0 <= partition_id < n_clients:
        raise UserError(
            f"the {cfg.data.partition} partition of {cfg.data.data} has {n_clients} clients, but this federation "
            f"has {num_partitions} nodes (partition id {partition_id}): set num-supernodes to {n_clients}"
        )
    users = clients[partition_id] if partition_id < len(clients) else np.empty(0, dtype=np.int64)
    return ClientData(partition_id, ds.sequences, ds.split, users)


def build_global_model(
    data: SequenceData, cfg: ModelConfig, state: dict | None = None, hardware: DeviceConfig | None = None
) -> SequentialRecommender:
    """The global model for ``data``, with the weights ``state`` when given, on the device ``hardware`` names
    (the CPU without one)."""
    model = build_model(cfg.name, model_config_for(data, cfg), data)
    if hardware is not None:
        device = resolve_device(hardware.device)
        check_precision(device, hardware.precision)
        model.to(device)
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


def training_windows(model: SequentialRecommender, data: ClientData, fit: LocalTrainingConfig, seed: int):
    return training_examples(data.sequences, data.split, data.users, model.cfg.max_len, fit.window, seed)


def train_locally(
    model: SequentialRecommender,
    data: ClientData,
    fit: LocalTrainingConfig,
    seed: int,
    proximal_mu: float | None = None,
    kept: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Plain local training for one round; ``proximal_mu``: FedProx's proximal term. ``kept``: the client's
    optimiser state from its previous round (``--keep-optimizer``; empty the first time), replaced in place by the
    state this round ends with."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    windows = training_windows(model, data, fit, seed)
    if len(windows) == 0:
        return TrainResult(0, float("nan"), 0, time.perf_counter() - start)
    loader = training_loader(windows, fit.batch_size, seed, fit.by_length)
    optimizer = adamw(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    if kept is not None:
        restore_moments(model, optimizer, kept)
    penalty = _proximal_term(model, proximal_mu) if proximal_mu is not None else None
    losses, steps = [], 0
    epochs = fit.local_epochs if fit.local_steps is None else None
    while (epochs is not None and len(losses) < epochs) or (epochs is None and steps < fit.local_steps):
        left = None if epochs is not None else fit.local_steps - steps
        loss, taken = train_epoch(
            model,
            loader,
            optimizer,
            windows.batch_of,
            max_steps=left,
            penalty=penalty,
            packed=True,
            precision=fit.hardware.precision,
        )
        losses.append((loss, taken))
        steps += taken
    mean_loss = sum(loss * n for loss, n in losses) / max(1, steps)
    if kept is not None:
        kept.clear()
        kept.update(optimizer_moments(model, optimizer))
    return TrainResult(len(windows), mean_loss, steps, time.perf_counter() - start)


def item_counts(data: ClientData) -> list[int]:
    """How often each item id (0: none) occurs in the training events of the client's users (``--item-weighted``)."""
    return training_item_counts(data.sequences, data.split, data.users).tolist()


def _proximal_term(model: SequentialRecommender, mu: float):
    """FedProx: (mu / 2) * ||w - w_global||^2, w_global being the weights the round started from."""
    anchors = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def penalty() -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))

    return penalty


def evaluate_locally(model: SequentialRecommender, data: ClientData, protocol: str, which: str) -> MetricSums:
    if len(data.users) == 0:
        return MetricSums()
    return evaluate_sums(
        model, data.sequences, data.split, which, users=data.users, max_len=model.cfg.max_len, protocol=protocol
    )


def client_seed(cfg: RunConfig, server_round: int, client: int) -> int:
    return round_seed(cfg.data.seed, server_round, client)
