"""Aggregation strategies by name, from Flower's ``flwr.serverapp.strategy``, and their state for resuming.

The federation loop samples clients itself (deterministically, by partition id) and uses a strategy for what it
is good at: building the round's messages and aggregating the replies, weighted by ``num-examples``.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedseqrec.errors import UserError
from fedseqrec.federated.config import STRATEGIES, AlgorithmConfig

# Strategy attributes that change from round to round (server optimiser moments, momentum, previous weights).
STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector", "current_arrays", "clipping_norm")


def _no_metric_averaging(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    # Flower would weight-average client metrics; the federation loop reads the replies itself instead.
    return MetricRecord()


# Every node the loop addresses takes part: the loop has already chosen them.
COMMON = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
    "train_metrics_aggr_fn": _no_metric_averaging,
    "evaluate_metrics_aggr_fn": _no_metric_averaging,
}


def build_strategy(cfg: AlgorithmConfig, client_lr: float, mechanism=None) -> FedAvg:
    """The run's strategy by name; a privacy mechanism may bring its own (DP-FedAvg) or put its aggregate beneath
    the strategy's server optimiser (user-level DP: the noisy sum)."""
    own = mechanism.strategy(COMMON) if mechanism is not None else None
    if own is not None:
        return own
    cls, options = _named(cfg, client_lr)
    if mechanism is not None:
        cls, options = mechanism.aggregate_class(cls), {**options, **mechanism.aggregate_options()}
    return cls(**options, **COMMON)


def _named(cfg: AlgorithmConfig, client_lr: float) -> tuple[type, dict]:
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg, {}
    if name == "fedprox":
        return FedProx, {"proximal_mu": cfg.proximal_mu}
    if name == "fedavgm":
        lr = 1.0 if cfg.server_lr is None else cfg.server_lr
        return FedAvgM, {"server_learning_rate": lr, "server_momentum": cfg.server_momentum}
    optimisers = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}
    if name in optimisers:
        # eta_l is only reported by Flower's FedOpt; the clients' own learning rate is --lr.
        options = {"eta": 1e-2 if cfg.server_lr is None else cfg.server_lr, "eta_l": client_lr, "tau": cfg.tau}
        if name != "fedadagrad":
            options.update(beta_1=cfg.beta_1, beta_2=cfg.beta_2)
        return optimisers[name], options
    raise UserError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def strategy_state(strategy: FedAvg) -> dict:
    """The strategy's round-to-round state as tensors (for ``torch.load(weights_only=True)``)."""
    state = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if isinstance(value, ArrayRecord):
            state[name] = {"record": {k: torch.from_numpy(np.array(v.numpy())) for k, v in value.items()}}
        elif isinstance(value, dict):
            state[name] = {"dict": {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}}
        elif isinstance(value, list):
            state[name] = {"list": [torch.from_numpy(np.asarray(v)) for v in value]}
        elif isinstance(value, float):
            state[name] = {"float": value}
    return state


def restore_strategy_state(strategy: FedAvg, state: dict) -> None:
    for name, packed in state.items():
        ((kind, value),) = packed.items()
        if kind == "record":
            restored = ArrayRecord({k: Array(v.numpy()) for k, v in value.items()})
        elif kind == "dict":
            restored = {k: v.numpy() for k, v in value.items()}
        elif kind == "float":
            restored = float(value)
        else:
            restored = [v.numpy() for v in value]
        setattr(strategy, name, restored)
