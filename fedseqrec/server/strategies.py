"""Aggregation strategies by name, from Flower's ``flwr.serverapp.strategy``, and their state for resuming.

The federation loop samples clients itself (deterministically, by partition id) and uses a strategy for what it
is good at: building the round's messages and aggregating the replies, weighted by ``num-examples``.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from fedseqrec.errors import RunError, UserError
from fedseqrec.federated.config import ROBUST_STRATEGIES, STRATEGIES, AlgorithmConfig, robust_minimum
from fedseqrec.federated.messages import ITEM_COUNTS_KEY

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


def build_strategy(cfg: AlgorithmConfig, client_lr: float, mechanism=None, item_keys=()) -> FedAvg:
    """The run's strategy by name; a privacy mechanism may bring its own (DP-FedAvg) or put its aggregate beneath
    the strategy's server optimiser (user-level DP: the noisy sum); ``--item-weighted`` puts :class:`ItemWeighted`
    there, averaging the tables named by ``item_keys`` row by row."""
    own = mechanism.strategy(COMMON) if mechanism is not None else None
    if own is not None:
        return own
    cls, options = _named(cfg, client_lr)
    if mechanism is not None:
        cls, options = mechanism.aggregate_class(cls), {**options, **mechanism.aggregate_options()}
    if cfg.item_weighted:
        cls, options = with_item_weighting(cls), {**options, "item_keys": tuple(item_keys)}
    return cls(**options, **COMMON)


ABSENT_WEIGHT = 1e-3  # a row no client holds: the plain mean of the clients' (negatives-only) moves


class ItemWeighted(FedAvg):
    """FedAvg with the item tables averaged row by row: item i's row over the clients weighted by how often their
    users' training events hold item i (their ``item-counts``), every other array by ``num-examples``.

    Under plain FedAvg an item's row, moved mostly by the silos whose users hold it (the others move it only as a
    negative), comes back shorter by the share of silos that hold it (about half for Beauty's median item over ten
    silos, a tenth for a rare one); here it moves as far as its holders moved it. Counts
    that are missing, of the wrong length, negative or not finite count as zero for that client."""

    def __init__(self, item_keys=(), **kwargs):
        super().__init__(**kwargs)  # (a server optimiser's __init__ reaches here without ours: set again after)
        self.item_keys = tuple(item_keys)

    def aggregate_train(self, server_round, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        examples = np.array([float(r.content["metrics"]["num-examples"]) for r in valid])
        arrays = [r.content["arrays"] for r in valid]
        averaged = {}
        for key in arrays[0]:
            stacked = np.stack([a[key].numpy().astype(np.float64) for a in arrays])  # (clients, *shape)
            if key in self.item_keys:
                weights = np.stack([_row_weights(r, stacked.shape[1]) for r in valid])  # (clients, rows)
            else:
                weights = examples
            weights = weights.reshape(weights.shape + (1,) * (stacked.ndim - weights.ndim))
            mean = (stacked * weights).sum(axis=0) / weights.sum(axis=0)
            averaged[key] = Array(mean.astype(arrays[0][key].numpy().dtype, copy=False))
        return ArrayRecord(averaged), self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)


def _row_weights(reply, rows: int) -> np.ndarray:
    counts = reply.content["metrics"].get(ITEM_COUNTS_KEY)
    weights = np.full(rows, ABSENT_WEIGHT)
    values = np.asarray(counts if isinstance(counts, list) else [], dtype=np.float64)
    if 0 < len(values) <= rows and np.isfinite(values).all() and (values >= 0).all():
        weights[: len(values)] += values
    return weights


def with_item_weighting(strategy_class: type) -> type:
    """The run's strategy with :class:`ItemWeighted` as the average its server optimiser (if any) starts from."""
    if strategy_class is FedAvg:
        return ItemWeighted

    def __init__(self, item_keys=(), **kwargs):
        strategy_class.__init__(self, **kwargs)  # Flower's optimisers take their own options only
        self.item_keys = tuple(item_keys)

    return type(f"ItemWeighted{strategy_class.__name__}", (strategy_class, ItemWeighted), {"__init__": __init__})


def _named(cfg: AlgorithmConfig, client_lr: float) -> tuple[type, dict]:
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg, {}
    if name == "fedprox":
        return FedProx, {"proximal_mu": cfg.proximal_mu}
    if name == "fedavgm":
        lr = 1.0 if cfg.server_lr is None else cfg.server_lr
        return FedAvgM, {"server_learning_rate": lr, "server_momentum": cfg.server_momentum}
    robust = _robust(cfg)
    if robust is not None:
        return robust
    optimisers = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}
    if name in optimisers:
        # eta_l is only reported by Flower's FedOpt; the clients' own learning rate is --lr.
        options = {"eta": 1e-2 if cfg.server_lr is None else cfg.server_lr, "eta_l": client_lr, "tau": cfg.tau}
        if name != "fedadagrad":
            options.update(beta_1=cfg.beta_1, beta_2=cfg.beta_2)
        return optimisers[name], options
    raise UserError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _robust(cfg: AlgorithmConfig) -> tuple[type, dict] | None:
    f = cfg.byzantine_clients
    return {
        "fedmedian": (FedMedian, {}),
        "fedtrimmedavg": (FedTrimmedAvg, {"beta": cfg.trim_beta}),
        "krum": (Krum, {"num_malicious_nodes": f}),
        "multikrum": (MultiKrumNMinusF, {"num_malicious_nodes": f, "keep": cfg.krum_select}),
        "bulyan": (Bulyan, {"num_malicious_nodes": f}),
    }.get(cfg.strategy)


class MultiKrumNMinusF(MultiKrum):
    """Multi-Krum keeping ``keep`` updates, or by default as many as the round's updates minus the tolerated
    malicious ones (Flower's default keeps one: Krum)."""

    def __init__(self, keep: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.keep = keep

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.num_nodes_to_select = self.keep or max(1, len(replies) - self.num_malicious_nodes)
        return super().aggregate_train(server_round, replies)


def check_robust_round(cfg: AlgorithmConfig, updates: int, server_round: int) -> None:
    """A robust rule given fewer updates than it is defined for would leave the model unchanged in silence."""
    needed = robust_minimum(cfg.strategy, cfg.byzantine_clients)
    if cfg.strategy in ROBUST_STRATEGIES and updates < needed:
        raise RunError(
            f"round {server_round}: {updates} valid updates, but --strategy {cfg.strategy} with "
            f"--byzantine-clients {cfg.byzantine_clients} needs at least {needed}"
        )


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
