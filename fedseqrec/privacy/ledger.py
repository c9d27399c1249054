"""The privacy ledger of one client: every DP-SGD round it took part in, composed into its true ε.

It lives in Flower's ``context.state`` and in a node-local JSON file written atomically after every round, so a
client whose SuperNode restarts (new node id, empty ``context.state``) continues from its real ε instead of zero.
Of the two copies the longer one wins; two copies that disagree on the rounds they share are refused. The file
carries a SHA-256 of its content: a corrupted or hand-edited ledger is refused (a checksum guards against accidents
and casual edits, not against someone who recomputes it — the server's own record of every release covers that).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedseqrec.checks import number_problem
from fedseqrec.errors import UserError
from fedseqrec.privacy.accounting import epsilon

FORMAT = "fedseqrec-privacy-ledger"
VERSION = 2  # 2: with its SHA-256


def _digest(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerRecord:
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int

    def mechanism(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class PrivacyLedger:
    client: str
    delta: float
    accountant: str = "rdp"
    budget: float | None = None
    records: list[LedgerRecord] = field(default_factory=list)

    def epsilon(self, accountant: str | None = None, extra: LedgerRecord | None = None) -> float:
        records = [r.mechanism() for r in self.records] + ([extra.mechanism()] if extra else [])
        return epsilon(records, self.delta, accountant or self.accountant)

    def would_exceed_budget(self, planned: LedgerRecord) -> bool:
        return self.budget is not None and self.epsilon(extra=planned) > self.budget

    def add(self, record: LedgerRecord) -> None:
        # The same round twice: a round trained again after the server lost it (killed before saving) — two
        # releases, both composed.
        if self.records and record.round < self.records[-1].round:
            raise ValueError(f"ledger of client {self.client}: round {record.round} after {self.records[-1].round}")
        self.records.append(record)

    # --- persistence ------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        value = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return json.dumps({**value, "sha256": _digest(value)}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str) -> PrivacyLedger:
        try:
            value = json.loads(text)
            if value.get("format") != FORMAT:
                raise ValueError("not a privacy ledger")
            stored = value.pop("sha256", None)
            if stored != _digest(value):
                raise ValueError(
                    "its checksum does not match its content: edited or corrupted; refusing it rather "
                    "than under-report ε"
                )
            records = [LedgerRecord(**r) for r in value["records"]]
            return cls(value["client"], float(value["delta"]), value["accountant"], value["budget"], records)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{source}: unreadable privacy ledger ({err})") from err

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("w") as handle:
            handle.write(self.to_json())
            handle.flush()
            os.fsync(handle.fileno())  # a crash right after the rename must not leave an empty ledger
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger | None:
        return cls.from_json(path.read_text(), str(path)) if path.exists() else None


def check_against_held(ledger: PrivacyLedger | None, held: list[LedgerRecord], source: str, new_ledger: bool):
    """The node's ledger against the records the server holds for this client (append-only: the node's copy must
    contain every one of them). Without a ledger, a client the server holds rounds for refuses to train unless its
    operator starts a new ledger (``new-ledger`` in the node config), which then continues from the server's
    records — never from zero."""
    if ledger is None:
        if held and not new_ledger:
            raise UserError(
                f"{source}: no privacy ledger, but the server holds {len(held)} rounds of this client: restore the "
                "file, or set new-ledger=true in the node config to continue from the server's record"
            )
        return None
    if ledger.records[: len(held)] != held:
        raise UserError(
            f"{source}: the privacy ledger lacks or changed records of the {len(held)} rounds the server holds for "
            "this client; refusing to train rather than under-report ε"
        )
    return ledger


def reconcile(from_state: PrivacyLedger | None, from_file: PrivacyLedger | None) -> PrivacyLedger | None:
    """The more complete of the two copies; they must agree on the rounds both hold."""
    copies = [c for c in (from_state, from_file) if c is not None]
    if len(copies) < 2:
        return copies[0] if copies else None
    short, long = sorted(copies, key=lambda c: len(c.records))
    if short.client != long.client or long.records[: len(short.records)] != short.records:
        raise UserError(
            f"privacy ledger of client {long.client}: the node's file and its in-memory copy disagree; "
            "refusing to train rather than under-report ε"
        )
    return long


# --- the ledger in a reply's metrics (client → server) ------------------------------------------------------------


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


LEDGER_LISTS = ("ledger-round", "ledger-noise", "ledger-rate", "ledger-steps")


def ledger_problem(metrics, server_round: int, max_delta: float) -> str | None:
    """Why a reply's privacy figures cannot be read as a ledger (None: they can): ε, δ and budget finite and in
    range (δ at most the run's), four record lists of one length, each record a round up to this one in order (a
    round held twice is a round trained again after a stop), a positive noise multiplier, a sampling rate in
    (0, 1] and a whole number of steps. A client that trained this round must hold this round's record."""
    problem = (
        number_problem(metrics, "epsilon", low=0.0)
        or number_problem(metrics, "delta", low=1e-300, high=max_delta)
        or number_problem(metrics, "budget", low=-1.0)
    )
    if problem:
        return f"privacy ledger: {problem}"
    lists = [metrics.get(key) for key in LEDGER_LISTS]
    if any(not isinstance(values, list) for values in lists):
        return f"privacy ledger: {', '.join(LEDGER_LISTS)} must each be a list"
    if len({len(values) for values in lists}) != 1:
        return "privacy ledger: its record lists differ in length"
    last = 0
    for index, (r, s, q, n) in enumerate(zip(*lists, strict=True), 1):
        record = {"round": r, "noise": s, "rate": q, "steps": n}
        problem = (
            # (a round may be held twice: trained again after the server was stopped before saving it)
            number_problem(record, "round", low=max(last, 1), high=server_round, whole=True)
            or number_problem(record, "noise", low=1e-12)
            or number_problem(record, "rate", low=1e-12, high=1.0)
            or number_problem(record, "steps", low=0, whole=True)
        )
        if problem:
            return f"privacy ledger record {index}: {problem}"
        last = int(r)
    trained = metrics.get("num-examples", 0) > 0 and not metrics.get("declined", 0)
    if trained and last != server_round:
        return f"privacy ledger: the client trained in round {server_round} but holds no record of it"
    return None


def ledger_from_metrics(metrics, accountant: str) -> dict:
    """The server's copy of a client's privacy state, from a reply's metrics (the inverse of ledger_metrics)."""
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
