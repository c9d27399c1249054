"""The run's other records of each client's privacy ledger, beside ``privacy.json``: ``fedseqrec report`` recomputes
ε from every one of them, so that no single edited file can lower what a client is reported to have spent."""

from __future__ import annotations

import json
from pathlib import Path

from fedseqrec.errors import UserError
from fedseqrec.privacy.ledger import PrivacyLedger
from fedseqrec.results.folder import STATE, RunFolder


def _other_copies(folder: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The run's other records of each client's ledger, beside privacy.json: the server's copy in its resume state
    (``state.pt``, saved with privacy.json at every round) and the clients' own ledger files kept in the run folder
    (simulation); and what could not be read of them."""
    copies, problems = [], []
    if (folder / STATE).is_file():
        try:
            saved = RunFolder(folder).load_state().get("privacy")
            if saved:
                copies.append((STATE, json.loads(saved).get("clients", {})))
        except (UserError, ValueError, AttributeError) as err:
            problems.append(f"{STATE}: unreadable ({err})")
    for path in sorted((folder / "ledgers").glob("client-*.json")):
        try:
            ledger = PrivacyLedger.load(path)
        except UserError as err:
            problems.append(f"{path.name}: {err}")
            continue
        records = [
            {"noise_multiplier": r.noise_multiplier, "sample_rate": r.sample_rate, "steps": r.steps}
            for r in ledger.records
        ]
        copies.append((f"ledgers/{path.name}", {ledger.client: {**_entry(ledger), "ledger": records}}))
    return copies, problems


def _entry(ledger: PrivacyLedger) -> dict:
    return {"delta": ledger.delta, "accountant": ledger.accountant}


def check_against_other_copies(folder: Path, clients: list[dict], recompute, tolerance: float) -> list[str]:
    """Every other record of a client's ledger recomputed: the report keeps the largest ε any of them gives, and
    flags each copy that privacy.json does not match (an edit of privacy.json alone cannot lower a client's ε)."""
    by_client = {c["client"]: c for c in clients}
    stated = {c["client"]: c["epsilon"] for c in clients}  # what privacy.json says, before any copy raises it
    copies, flags = _other_copies(folder)
    for source, entries in copies:
        for client, entry in entries.items():
            eps = recompute(entry)
            mine = by_client.get(str(client))
            if mine is None:
                flags.append(f"client {client} is in {source} (ε {eps:.4g}) but not in privacy.json")
                continue
            if eps > stated[str(client)] * (1 + tolerance) + 1e-9:
                flags.append(
                    f"client {client}: {source} gives ε {eps:.4g}, privacy.json {stated[str(client)]:.4g}; the "
                    "report keeps the larger"
                )
                mine["epsilon"] = max(mine["epsilon"], eps)
    return flags
