"""A client's private round (client-local DP-SGD): open its ledger, check the budget, train under DP-SGD, record
and persist the round. The ClientApp calls :func:`private_round` instead of plain training when the run's
mechanism is DP-SGD at the clients; nothing else in the client changes.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

from fedseqrec.data.partition import ClientData
from fedseqrec.errors import UserError
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.config import FitConfig
from fedseqrec.models.training import TrainResult
from fedseqrec.privacy.config import PrivacyConfig, check_delta, default_delta
from fedseqrec.privacy.dpsgd import train_privately
from fedseqrec.privacy.ledger import LedgerRecord, PrivacyLedger, check_against_held, reconcile
from fedseqrec.privacy.round_plan import DPSettings, plan_round

STATE_PREFIX = "privacy-ledger"  # one entry per client: a pooled simulated node acts as several


@dataclass
class PrivateRound:
    ledger: PrivacyLedger
    result: TrainResult | None  # None: declined
    reason: str = ""


@dataclass(frozen=True)
class LocalSchedule:
    """How much a client trains in a round, and the horizon an ε target is spread over."""

    local_epochs: int
    local_steps: int | None
    horizon: int  # rounds the target ε is calibrated for


def _state_key(client: int) -> str:
    return f"{STATE_PREFIX}-{client}"


def client_delta(privacy: PrivacyConfig, users: int) -> float:
    delta = privacy.delta if privacy.delta is not None else default_delta(users)
    check_delta(delta, users, "this client")
    return delta


def open_ledger(
    privacy: PrivacyConfig, state, path: Path, data: ClientData, held: list[dict] = (), new_ledger: bool = False
) -> PrivacyLedger:
    """The client's ledger: the node-local file and the copy in ``state`` (Flower's ``context.state``), checked
    against ``held``, the records the server holds for this client."""
    in_state = None
    if _state_key(data.client) in state.config_records:
        in_state = PrivacyLedger.from_json(str(state.config_records[_state_key(data.client)]["json"]), "context.state")
    held_records = [LedgerRecord(**r) for r in held]
    ledger = check_against_held(reconcile(in_state, PrivacyLedger.load(path)), held_records, str(path), new_ledger)
    if ledger is None:
        delta = client_delta(privacy, len(data.users))
        ledger = PrivacyLedger(str(data.client), delta, privacy.accountant, privacy.budget_or_target(), held_records)
    elif ledger.client != str(data.client):
        raise UserError(f"{path}: the privacy ledger of client {ledger.client}, not of client {data.client}")
    # A budget only tightens: the run's budget applies, but never raises one the ledger already holds.
    budgets = [b for b in (ledger.budget, privacy.budget_or_target()) if b is not None]
    ledger.budget = min(budgets) if budgets else None
    return ledger


def keep_ledger(state, ledger: PrivacyLedger, path: Path) -> None:
    from flwr.app import ConfigRecord

    ledger.save(path)  # first the durable copy: a crash between the two leaves the longer one on disk
    state.config_records[_state_key(int(ledger.client))] = ConfigRecord({"json": ledger.to_json()})


def private_round(
    model: SequentialRecommender,
    data: ClientData,
    privacy: PrivacyConfig,
    fit: FitConfig,
    schedule: LocalSchedule,
    seed: int,
    server_round: int,
    state,
    ledger_path: Path,
    held: list[dict] = (),
    new_ledger: bool = False,
) -> PrivateRound:
    ledger = open_ledger(privacy, state, ledger_path, data, held, new_ledger)
    windows = TrainingWindows(data.sequences, data.split, data.users, model.cfg.max_len, fit.random_window, seed)
    if len(windows) == 0:
        return PrivateRound(ledger, TrainResult(0, float("nan"), 0, 0.0))
    settings = DPSettings.of(privacy, ledger.delta, schedule.horizon)
    plan = plan_round(len(windows), fit.batch_size, schedule.local_epochs, schedule.local_steps, settings, server_round)
    if ledger.records and ledger.records[-1].round > server_round:
        raise UserError(
            f"client {data.client}: its ledger ({ledger_path}) holds round {ledger.records[-1].round}, after this "
            f"round {server_round}: is it the ledger of another run?"
        )
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
        loss, steps, seconds = train_privately(model, windows, plan, settings, fit, seed)
    if steps != plan.steps:
        raise RuntimeError(f"planned {plan.steps} DP-SGD steps, took {steps}")
    ledger.add(plan)
    keep_ledger(state, ledger, ledger_path)
    return PrivateRound(ledger, TrainResult(len(windows), loss, steps, seconds))
