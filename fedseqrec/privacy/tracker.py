"""The server's view of every client's privacy: the latest ledger each client sent, re-checked independently.

Per-client ε are kept per client and aggregated as a maximum, never averaged. The server recomputes each
reported ε from the ledger records with the same accountant and warns when a client reports less.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.client import ledger_from_metrics

TOLERANCE = 0.01  # relative: the PRV accountant's own error bound is of this order


class PrivacyTracker:
    def __init__(self, accountant: str, warn: Callable[[str], None]):
        self.accountant = accountant
        self.warn = warn
        self.clients: dict[str, dict] = {}
        self.history: list[dict] = []

    def observe(self, server_round: int, replies: list) -> dict:
        """Record the ledgers of this round's replies; returns what the round's log line keeps."""
        declined = []
        for reply in replies:
            metrics = reply.content["metrics"]
            client = str(int(metrics["partition-id"]))
            if "epsilon" not in metrics:
                continue
            entry = ledger_from_metrics(metrics, self.accountant)
            entry["epsilon_checked"] = self.recompute(entry)
            if entry["epsilon"] < entry["epsilon_checked"] * (1 - TOLERANCE):
                self.warn(
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

    def recompute(self, entry: dict) -> float:
        records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in entry["ledger"]]
        return epsilon(records, entry["delta"], self.accountant)

    def epsilon_of(self, client: str) -> float:
        entry = self.clients[client]
        return max(entry["epsilon"], entry["epsilon_checked"])

    def max_epsilon(self) -> float:
        return max((self.epsilon_of(c) for c in self.clients), default=0.0)

    def to_json(self) -> str:
        return json.dumps({"clients": self.clients, "history": self.history})

    def restore(self, text: str, last_round: int) -> None:
        value = json.loads(text)
        self.clients = value["clients"]
        self.history = [h for h in value["history"] if h["round"] <= last_round]
