"""The server's side of DP-SGD at every client: its own record of every client's releases, and their ε.

The server knows what it asked each client to do (σ or the ε target σ is calibrated from, δ, batch size, local
epochs or steps, the horizon), so it plans each client's round as the client does and refuses a reply whose ledger
is not that plan, or that drops or changes a record the server holds. A refused reply that carries an update still
released it: the plan (or the client's claim, where that costs more) joins the client's record. Per-client ε are
composed from the server's records, listed per client and aggregated as a maximum, never averaged.

What the server cannot see: how many users a client really trained on (``num-examples`` is the client's word and
sets the plan's sampling rate) and whether it really added the noise it planned. Under local DP-SGD the clients are
trusted to run the mechanism; DP-FedAvg and user-level DP, whose noise the server adds, do not need that trust.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from fedseqrec.checks import number_problem
from fedseqrec.errors import UserError
from fedseqrec.jsonio import dumps
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.config import LOCAL_DPSGD, default_delta
from fedseqrec.privacy.ledger import LedgerRecord, ledger_from_metrics, ledger_problem
from fedseqrec.privacy.mechanism import BudgetExhausted, PrivacyMechanism
from fedseqrec.privacy.round_plan import DPSettings, plan_round

TOLERANCE = 0.01  # relative: the PRV accountant's own error bound is of this order
MECHANISM = (
    "DP-SGD (Opacus) at every client: each user's gradient clipped to max-grad-norm, Gaussian noise of "
    "noise-multiplier x max-grad-norm added to each batch's sum, batches drawn by Poisson sampling; every step of "
    "every round a client trained in is composed in that client's ledger (Poisson-subsampled Gaussian mechanism)"
)
PRIVACY_UNIT = (
    "user-level, per client: one training example is one user's whole behaviour sequence (the most recent "
    "max-len + 1 events of each window), so each client's (ε, δ) covers adding or removing one of its users "
    "with all of their events"
)
SAMPLING = "every client in every round it is chosen for (DP-SGD is per client)"


def ledger_regression(held: list[dict], reported: list[dict]) -> str | None:
    """Why a client's reported ledger cannot follow the records the server holds (None: it extends them). A
    ledger is append-only: a report that lost or changed a held record would lower the client's ε."""
    if reported[: len(held)] == held:
        return None
    if len(reported) < len(held):
        return f"has {len(reported)} records, fewer than the {len(held)} the server holds"
    first = next(i for i, (a, b) in enumerate(zip(held, reported, strict=False)) if a != b)
    return f"changed the record of round {held[first]['round']} that the server holds"


def _trained(metrics) -> bool:
    return metrics["num-examples"] > 0 and not metrics.get("declined", 0)


def _same_record(a: LedgerRecord, b: LedgerRecord) -> bool:
    return (
        a.round == b.round
        and a.steps == b.steps
        and math.isclose(a.noise_multiplier, b.noise_multiplier, rel_tol=1e-9)
        and math.isclose(a.sample_rate, b.sample_rate, rel_tol=1e-9)
    )


def _described(record: LedgerRecord) -> str:
    return f"σ {record.noise_multiplier:.6g}, q {record.sample_rate:.6g}, {record.steps} steps"


def _claimed_latest(metrics, server_round: int, accountant: str) -> LedgerRecord | None:
    """The reply's record of this round, where its ledger can be read and holds one."""
    if "epsilon" not in metrics or ledger_problem(metrics, server_round, 1.0) is not None:
        return None
    records = ledger_from_metrics(metrics, accountant)["ledger"]
    return LedgerRecord(**records[-1]) if records and records[-1]["round"] == server_round else None


def records_of(entry: dict) -> list[tuple[float, float, int]]:
    return [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in entry["ledger"]]


class LocalDPSGD(PrivacyMechanism):
    name = LOCAL_DPSGD

    def __init__(self, privacy, run):
        super().__init__(privacy, run)
        self.clients: dict[str, dict] = {}
        self.history: list[dict] = []

    def start(self, n_clients: int, saved: str | None, last_round: int) -> None:
        if saved:
            value = json.loads(saved)
            self.clients = value["clients"]
            self.history = [h for h in value["history"] if h["round"] <= last_round]

    def planned(self, server_round: int, examples: int, delta: float) -> LedgerRecord:
        """The round's record a client of ``examples`` training users must hold: the plan the server sent (σ or
        the ε target it is calibrated from, batch size, local epochs or steps, horizon) followed for that many
        users, exactly as the client plans it (:func:`fedseqrec.privacy.dpsgd.plan_round`)."""
        settings = DPSettings.of(self.privacy, delta, self.run.horizon)
        run = self.run
        return plan_round(examples, run.batch_size, run.local_epochs, run.local_steps, settings, server_round)

    def delta_problem(self, delta: float, examples: int) -> str | None:
        """A client's δ is the run's, or (none given) at most the default for a client of ``examples`` users."""
        if self.privacy.delta is not None:
            if math.isclose(delta, self.privacy.delta, rel_tol=1e-9):
                return None
            return f"privacy ledger: δ {delta:g} is not the run's --delta {self.privacy.delta:g}"
        if delta <= default_delta(examples) * (1 + 1e-9):
            return None
        return f"privacy ledger: δ {delta:g} is above {default_delta(examples):g}, the default for {examples} users"

    def reply_problem(self, server_round: int, metrics) -> str | None:
        """Every reply under DP-SGD carries its client's ledger, readable in full (see ``ledger_problem``); it extends
        the records the server holds for the client, and a client that trained this round holds exactly the
        server's plan for it (so a ledger can claim neither less noise spent, nor fewer steps, nor a smaller δ)."""
        if "epsilon" not in metrics:
            return "no privacy ledger (epsilon, delta, budget and the ledger records)"
        largest = self.privacy.delta if self.privacy.delta is not None else default_delta(1)
        problem = ledger_problem(metrics, server_round, largest)
        if problem is not None:
            return problem
        reported = ledger_from_metrics(metrics, self.privacy.accountant)
        held = self.clients.get(str(int(metrics["partition-id"])))
        problem = ledger_regression(held["ledger"], reported["ledger"]) if held else None
        if problem is not None:
            return f"privacy ledger {problem}"
        if not _trained(metrics):
            return None
        examples = int(metrics["num-examples"])
        problem = self.delta_problem(reported["delta"], examples)
        if problem is not None:
            return problem
        plan = self.planned(server_round, examples, reported["delta"])
        latest = LedgerRecord(**reported["ledger"][-1])
        if not _same_record(latest, plan):
            return (
                f"privacy ledger: its round-{server_round} record ({_described(latest)}) is not the server's plan "
                f"for {examples} training users ({_described(plan)})"
            )
        return None

    def account_refused(self, server_round: int, client: int, reply, reason: str) -> None:
        """A refused reply that carries an update released what its client trained: the server's plan for the
        round (or the record the client claims, where that costs more) joins the server's record of the client."""
        if not reply.content.array_records:
            return  # nothing was released
        metrics = reply.content.metric_records.get("metrics") or {}
        most = max(1, self.run.users)  # users of the federation (1: unknown)
        unreadable = number_problem(metrics, "num-examples", low=1, high=self.run.users or None, whole=True)
        examples = most if unreadable else int(metrics["num-examples"])  # (unreadable: the most steps possible)
        delta = self.privacy.delta if self.privacy.delta is not None else default_delta(examples)
        record = self.planned(server_round, examples, delta)
        claimed = _claimed_latest(metrics, server_round, self.privacy.accountant)
        if claimed is not None:
            record = LedgerRecord(
                server_round,
                min(record.noise_multiplier, claimed.noise_multiplier),
                max(record.sample_rate, claimed.sample_rate),
                max(record.steps, claimed.steps),
            )
        key = str(client)
        held = self.clients.get(key)
        entry = dict(held) if held else {"epsilon": 0.0, "budget": self.privacy.budget_or_target(), "status": ""}
        entry.update(
            delta=max(delta, entry.get("delta", 0.0)),
            accountant=self.privacy.accountant,
            ledger=(held["ledger"] if held else []) + [asdict(record)],
            last_round=server_round,
            refusals=[*entry.get("refusals", []), {"round": server_round, "reason": reason}],
        )
        entry["epsilon_checked"] = self.recompute(entry)
        entry["status"] = entry["status"] or "refused"
        self.clients[key] = entry

    def observe(self, server_round: int, replies: list) -> dict:
        """Record the ledgers of this round's replies (each checked by :meth:`reply_problem`: it extends the
        server's records and its latest record is the server's plan); returns what the round's log line keeps.
        A client's ε is the server's, composed from those records."""
        declined = []
        for reply in replies:
            metrics = reply.content["metrics"]
            client = str(int(metrics["partition-id"]))
            if "epsilon" not in metrics:
                continue
            # (its records are the server's: they extend what it held, and this round's is its plan)
            entry = ledger_from_metrics(metrics, self.privacy.accountant)
            refusals = self.clients.get(client, {}).get("refusals")
            if refusals:
                entry["refusals"] = refusals
            entry["epsilon_checked"] = self.recompute(entry)
            if entry["epsilon"] < entry["epsilon_checked"] * (1 - TOLERANCE):
                self.run.warn(
                    f"client {client} reports ε = {entry['epsilon']:.4f} but its ledger gives "
                    f"{entry['epsilon_checked']:.4f}: the report keeps the larger"
                )
            declined_now = bool(metrics.get("declined", 0))
            entry["status"] = "declined: budget" if declined_now else "active"
            if declined_now:
                declined.append(client)
                reason = reply.content.config_records.get("status")
                entry["reason"] = str(reason["reason"]) if reason is not None else "budget"
            entry["last_round"] = max([r["round"] for r in entry["ledger"]], default=0)
            self.clients[client] = entry
        epsilons = {c: self.epsilon_of(c) for c in sorted(self.clients, key=int)}
        self.history.append(
            {"round": server_round, "max_epsilon": max(epsilons.values(), default=0.0), "epsilons": epsilons}
        )
        return {"epsilon_max": self.history[-1]["max_epsilon"], "declined": declined}

    def client_config(self, client: int) -> dict:
        """The records the server holds for ``client``: the node checks its ledger against them, and a node that
        lost its ledger file continues from them (never from zero) once its operator says so."""
        entry = self.clients.get(str(client))
        return {"held-ledger": json.dumps(entry["ledger"] if entry else [])}

    def min_updates(self, chosen: int) -> int:
        return self.run.min_clients

    def too_few_updates(self, server_round: int, declined: list[str], updates: int) -> None:
        if declined:
            raise BudgetExhausted(
                f"privacy budget exhausted: in round {server_round} clients {', '.join(declined)} declined to "
                f"train, {updates} updates left, fewer than --min-clients {self.run.min_clients}"
            )

    def recompute(self, entry: dict) -> float:
        return epsilon(records_of(entry), entry["delta"], self.privacy.accountant)

    def epsilon_of(self, client: str) -> float:
        entry = self.clients[client]
        return max(entry["epsilon"], entry["epsilon_checked"])

    def max_epsilon(self) -> float:
        return max((self.epsilon_of(c) for c in self.clients), default=0.0)

    def state(self) -> str:
        return dumps(  # (a non-finite figure is written as null)
            {
                "mechanism": MECHANISM,
                "privacy_unit": PRIVACY_UNIT,
                "sampling": SAMPLING,
                "clients": self.clients,
                "history": self.history,
            }
        )

    def summary(self) -> dict:
        return {"max_epsilon": self.max_epsilon(), "accountant": self.privacy.accountant, "mechanism": self.name}

    def check_resume(self, saved: str | None) -> None:
        """Refuse to resume a run in which too few clients could train another round (a round like their last
        one would take them over the budget)."""
        budget = self.privacy.budget_or_target()
        if not saved or budget is None:
            return
        clients = json.loads(saved)["clients"]
        spent = sum(
            1
            for entry in clients.values()
            if entry["ledger"]
            and epsilon(records_of(entry) + records_of(entry)[-1:], entry["delta"], entry["accountant"]) > budget
        )
        if clients and len(clients) - spent < self.run.min_clients:
            raise UserError(
                f"privacy budget already spent: {spent} of {len(clients)} clients cannot train another round "
                f"within ε = {budget:g}, fewer than --min-clients {self.run.min_clients} left"
            )
