"""The server's side of DP-SGD at every client: the latest ledger each client sent, re-checked independently.

Per-client ε are kept per client and aggregated as a maximum, never averaged. The server recomputes each
reported ε from the ledger records with the same accountant and warns when a client reports less.
"""

from __future__ import annotations

import json

from fedseqrec.errors import UserError
from fedseqrec.jsonio import dumps
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.config import LOCAL_DPSGD, default_delta
from fedseqrec.privacy.ledger import ledger_from_metrics, ledger_problem
from fedseqrec.privacy.mechanism import BudgetExhausted, PrivacyMechanism

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


def merged_records(held: list[dict], reported: list[dict]) -> list[dict]:
    """The held records, and the reported ones of later rounds: every release either side knows of."""
    last = max((r["round"] for r in held), default=0)
    return list(held) + [r for r in reported if r["round"] > last]


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

    def reply_problem(self, server_round: int, metrics) -> str | None:
        """Every reply under DP-SGD carries its client's ledger, readable in full (see ``ledger_problem``)."""
        if "epsilon" not in metrics:
            return "no privacy ledger (epsilon, delta, budget and the ledger records)"
        largest = self.privacy.delta if self.privacy.delta is not None else default_delta(1)
        return ledger_problem(metrics, server_round, largest)

    def observe(self, server_round: int, replies: list) -> dict:
        """Record the ledgers of this round's replies; returns what the round's log line keeps, with ``refused``:
        the clients whose reported ledger lost or changed records the server already holds (their update is not
        aggregated, and the server's record — never the shorter report — stays the client's ledger)."""
        declined, refused = [], {}
        for reply in replies:
            metrics = reply.content["metrics"]
            client = str(int(metrics["partition-id"]))
            if "epsilon" not in metrics:
                continue
            entry = ledger_from_metrics(metrics, self.privacy.accountant)
            held = self.clients.get(client)
            problem = ledger_regression(held["ledger"], entry["ledger"]) if held else None
            if problem is not None:
                refused[int(client)] = f"privacy ledger {problem}; the server keeps its own record of the client"
                entry = {**entry, "ledger": merged_records(held["ledger"], entry["ledger"])}
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
        return {"epsilon_max": self.history[-1]["max_epsilon"], "declined": declined, "refused": refused}

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
