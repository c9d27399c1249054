"""A client's private round: open its ledger, check the budget, train under DP-SGD, record and persist the round.

The ClientApp calls :func:`private_round` instead of plain training when the run config says ``dp``; nothing else
in the client changes.
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

from fedseqrec.client.task import ClientData, TrainResult, client_seed
from fedseqrec.errors import UserError
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.privacy.dpsgd import DPSettings, default_delta, plan_round, train_privately
from fedseqrec.privacy.ledger import PrivacyLedger, reconcile
from fedseqrec.runconfig import FederationConfig

STATE_KEY = "privacy-ledger"


@dataclass
class PrivateRound:
    ledger: PrivacyLedger
    result: TrainResult | None  # None: declined
    reason: str = ""


def client_delta(cfg: FederationConfig, users: int) -> float:
    delta = cfg.delta if cfg.delta is not None else default_delta(users)
    if users and delta >= 1.0 / users:
        raise UserError(
            f"--delta {delta} is not below 1 / {users} (the users of this client): such a δ allows leaking a "
            "whole user's data; choose a smaller one"
        )
    return delta


def ledger_file(cfg: FederationConfig, node_config, client: int) -> Path:
    """The node's own file (``ledger-path`` in the node config), else one per client in the run folder."""
    if "ledger-path" in node_config:
        return Path(str(node_config["ledger-path"]))
    if not cfg.out:
        raise UserError("DP-SGD needs a place for the privacy ledger: set out (the run folder) or ledger-path")
    return Path(cfg.out) / "ledgers" / f"client-{client}.json"


def open_ledger(cfg: FederationConfig, context, data: ClientData) -> tuple[PrivacyLedger, Path]:
    path = ledger_file(cfg, context.node_config, data.client)
    in_state = None
    if STATE_KEY in context.state.config_records:
        in_state = PrivacyLedger.from_json(str(context.state.config_records[STATE_KEY]["json"]), "context.state")
    ledger = reconcile(in_state, PrivacyLedger.load(path))
    if ledger is None:
        delta = client_delta(cfg, len(data.users))
        ledger = PrivacyLedger(str(data.client), delta, cfg.accountant, cfg.privacy_budget())
    elif ledger.client != str(data.client):
        raise UserError(f"{path}: the privacy ledger of client {ledger.client}, not of client {data.client}")
    # A budget only tightens: the run's budget applies, but never raises one the ledger already holds.
    budgets = [b for b in (ledger.budget, cfg.privacy_budget()) if b is not None]
    ledger.budget = min(budgets) if budgets else None
    return ledger, path


def keep_ledger(context, ledger: PrivacyLedger, path: Path) -> None:
    from flwr.app import ConfigRecord

    ledger.save(path)  # first the durable copy: a crash between the two leaves the longer one on disk
    context.state.config_records[STATE_KEY] = ConfigRecord({"json": ledger.to_json()})


def private_round(
    model: SequentialRecommender, data: ClientData, cfg: FederationConfig, server_round: int, context
) -> PrivateRound:
    ledger, path = open_ledger(cfg, context, data)
    seed = client_seed(cfg.seed, server_round, data.client)
    windows = TrainingWindows(data.sequences, data.split, data.users, model.cfg.max_len, cfg.window == "random", seed)
    if len(windows) == 0:
        return PrivateRound(ledger, TrainResult(0, float("nan"), 0, 0.0))
    settings = DPSettings(
        noise_multiplier=cfg.noise_multiplier,
        target_epsilon=cfg.epsilon,
        max_grad_norm=cfg.max_grad_norm,
        delta=ledger.delta,
        accountant=cfg.accountant,
        grad_sample_mode=cfg.grad_sample_mode,
        planned_rounds=cfg.rounds,
    )
    plan = plan_round(len(windows), cfg.batch_size, cfg.local_epochs, cfg.local_steps, settings, server_round)
    if ledger.records and ledger.records[-1].round >= server_round:
        raise UserError(f"client {data.client} already trained in round {server_round} (ledger {path})")
    if ledger.would_exceed_budget(plan):
        after = ledger.epsilon(extra=plan)
        reason = f"privacy budget: ε would reach {after:.3f} > budget {ledger.budget:g} (now {ledger.epsilon():.3f})"
        return PrivateRound(ledger, None, reason)
    import torch

    # The noise and the Poisson samples must be unpredictable: seeded from the OS, never from --seed (a known
    # seed would let anyone subtract the noise and see who was sampled). DP runs are not bit-reproducible.
    torch.manual_seed(secrets.randbits(63))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' backward-hook notices
        loss, steps, seconds = train_privately(
            model, windows, plan, settings, cfg.batch_size, cfg.lr, cfg.weight_decay, seed
        )
    if steps != plan.steps:
        raise RuntimeError(f"planned {plan.steps} DP-SGD steps, took {steps}")
    ledger.add(plan)
    keep_ledger(context, ledger, path)
    return PrivateRound(ledger, TrainResult(len(windows), loss, steps, seconds))


def ledger_metrics(ledger: PrivacyLedger) -> dict:
    """What a reply carries so the server can report the client's ε and re-check it from the records."""
    eps = ledger.epsilon()
    return {
        "epsilon": eps if math.isfinite(eps) else 1e308,
        "delta": ledger.delta,
        "budget": ledger.budget if ledger.budget is not None else -1.0,
        "ledger-round": [r.round for r in ledger.records],
        "ledger-noise": [float(r.noise_multiplier) for r in ledger.records],
        "ledger-rate": [float(r.sample_rate) for r in ledger.records],
        "ledger-steps": [int(r.steps) for r in ledger.records],
    }


def ledger_from_metrics(metrics, accountant: str) -> dict:
    """The server's copy of a client's privacy state, from a reply's metrics."""
    budget = float(metrics["budget"])
    return {
        "epsilon": float(metrics["epsilon"]),
        "delta": float(metrics["delta"]),
        "budget": None if budget < 0 else budget,
        "accountant": accountant,
        "ledger": [
            {"round": int(r), "noise_multiplier": float(s), "sample_rate": float(q), "steps": int(n)}
            for r, s, q, n in zip(
                metrics["ledger-round"],
                metrics["ledger-noise"],
                metrics["ledger-rate"],
                metrics["ledger-steps"],
                strict=True,
            )
        ],
    }
