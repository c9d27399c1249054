"""The client halves of the privacy mechanisms (paired with their server halves in
:mod:`fedseqrec.federated.mechanisms`): what a client does with the global model in one training round.

Each takes the model, the client's users, the round's configuration, the round, the node's Flower ``context``
(its state across rounds, its node config) and the message's config (``sent``: what the server half added for
this client), and returns a :class:`ClientRound`. Opacus is imported by the rounds that use it, not above.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedseqrec.data.partition import ClientData
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.messages import (
    CLIP_KEY,
    COUNT_NOISE_KEY,
    HELD_LEDGER_KEY,
    ITEM_ROWS_KEY,
    NOISE_STD_KEY,
    USER_RATE_KEY,
)
from fedseqrec.federated.task import client_seed, train_locally, training_windows
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.training import TrainResult
from fedseqrec.privacy.ledger import ledger_metrics


@dataclass
class ClientRound:
    result: TrainResult | None  # None: the client declined the round (its privacy budget)
    metrics: dict = field(default_factory=dict)  # what the mechanism adds to the reply's metrics
    reason: str = ""  # why it declined
    update: dict[str, torch.Tensor] | None = None  # what to send instead of the trained weights


def local_training(model: SequentialRecommender, data: ClientData, cfg: RunConfig, server_round: int, context, sent):
    """No privacy at the client (none; DP-FedAvg, whose clipping is a mod and noise the server's): train locally,
    FedProx's proximal term when asked, the AdamW moments kept from round to round with ``--keep-optimizer``."""
    mu = cfg.algorithm.proximal_mu if cfg.algorithm.strategy == "fedprox" else None
    kept = _kept_optimizer(context, data.client) if cfg.fit.keep_optimizer else None
    result = train_locally(model, data, cfg.fit, client_seed(cfg, server_round, data.client), mu, kept)
    if kept:
        context.state[_optimizer_key(data.client)] = ArrayRecord(kept)
    return ClientRound(result)


def _optimizer_key(client: int) -> str:
    # By partition, not by node: a pooled simulated node serves several clients.
    return f"optimizer-state:{client}"


def _kept_optimizer(context, client: int) -> dict[str, torch.Tensor]:
    """The client's AdamW state from its last round (``--keep-optimizer``), empty before its first."""
    key = _optimizer_key(client)
    return dict(context.state[key].to_torch_state_dict()) if key in context.state else {}


def ledger_file(cfg: RunConfig, node_config, client: int) -> Path:
    """The node's own file (``ledger-path`` in the node config), else one per client in the run folder."""
    if "ledger-path" in node_config:
        return Path(str(node_config["ledger-path"]))
    if not cfg.out:
        raise UserError("DP-SGD needs a place for the privacy ledger: set out (the run folder) or ledger-path")
    return Path(cfg.out) / "ledgers" / f"client-{client}.json"


def dp_sgd_training(model: SequentialRecommender, data: ClientData, cfg: RunConfig, server_round: int, context, sent):
    """DP-SGD inside the client: its ledger opened and checked against the records the server holds, the round
    declined when it would exceed the budget, else trained under DP-SGD and recorded."""
    from fedseqrec.privacy.client import LocalSchedule, private_round

    schedule = LocalSchedule(cfg.fit.local_epochs, cfg.fit.local_steps, cfg.planned_horizon())
    held = json.loads(str(sent.get(HELD_LEDGER_KEY, "[]")))
    new_ledger = str(context.node_config.get("new-ledger", "false")).lower() in ("1", "true", "yes")
    outcome = private_round(
        model,
        data,
        cfg.privacy,
        cfg.fit,
        schedule,
        client_seed(cfg, server_round, data.client),
        server_round,
        context.state,
        ledger_file(cfg, context.node_config, data.client),
        held,
        new_ledger,
    )
    return ClientRound(outcome.result, ledger_metrics(outcome.ledger), outcome.reason)


def user_level_contribution(model, data: ClientData, cfg: RunConfig, server_round: int, context, sent):
    """Federation-wide user-level DP: this silo's sampled users' clipped gradient sum (and its noise share)."""
    from fedseqrec.privacy.user_level import contribution_rule, private_part, silo_contribution

    started = time.perf_counter()
    own = private_part(data, cfg.privacy, cfg.data.seed)  # public users trained the initial model, not these rounds
    windows = training_windows(model, own, cfg.fit, client_seed(cfg, server_round, data.client))
    rule = contribution_rule(cfg.privacy, float(sent[CLIP_KEY]))
    rows = sent.get(ITEM_ROWS_KEY)
    reply = silo_contribution(
        model,
        windows,
        float(sent[USER_RATE_KEY]),
        rule,
        float(sent[NOISE_STD_KEY]),
        float(sent[COUNT_NOISE_KEY]),
        rows=[int(r) for r in rows] if rows is not None else None,
    )
    metrics = {"sampled-users": reply.sampled, "unclipped-centred": reply.unclipped}
    result = TrainResult(reply.sampled, reply.loss, 1, time.perf_counter() - started)
    return ClientRound(result, metrics, update=reply.total)
