"""The privacy report of a counted model's one release (``--model cooc --cooc-epsilon`` in a federation): no
rounds and no per-client ledgers, one ledger for every user, its ε recomputed from the records."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedseqrec.data.tasks import task_of
from fedseqrec.errors import UserError
from fedseqrec.jsonio import dumps
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.local_dpsgd import TOLERANCE
from fedseqrec.results.folder import recorded_data
from fedseqrec.results.privacy_plots import fmt

RECORD_FIELDS = ("round", "noise_multiplier", "sample_rate", "steps")


def release_report(folder: Path) -> dict:
    """The report of a counted model's one release (``--model cooc --cooc-epsilon`` in a federation): its record
    as the server wrote it into ``metrics.json``, ε recomputed from the ledger's records (the larger kept)."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{folder / 'metrics.json'}: unreadable ({err}); the release's record is kept there") from err
    record = metrics.get("privacy")
    if not record:
        raise UserError(f"{folder}: the counts were released without noise (no --cooc-epsilon): no privacy ledger")
    ledger = record.get("ledger")
    if not isinstance(ledger, list) or any(
        not isinstance(r, dict) or any(k not in r for k in RECORD_FIELDS) for r in ledger
    ):
        raise UserError(f"{folder / 'metrics.json'}: its privacy record has no ledger of {', '.join(RECORD_FIELDS)}")
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in ledger]
    recomputed = epsilon(records, float(record["delta"]), record["accountant"])
    flags = []
    if not math.isclose(recomputed, record["max_epsilon"], rel_tol=TOLERANCE, abs_tol=1e-9):
        flags.append(
            f"metrics.json claims ε {record['max_epsilon']:.4g}, its {len(ledger)} records give {recomputed:.4g}"
        )
    task = task_of(recorded_data(folder, find=False).task)
    return {
        **record,
        "max_epsilon": max(record["max_epsilon"], recomputed),
        "epsilon_reported": record["max_epsilon"],
        "epsilon_recomputed": recomputed,
        "test": metrics.get("test"),
        "metric": task.selection,
        "popularity": (metrics.get("popularity") or {}).get("test", {}).get(task.selection),
        "flags": flags,
    }


def release_markdown(report: dict) -> str:
    metric, test = report["metric"], (report.get("test") or {}).get(report["metric"])
    lines = [
        "# Privacy report",
        "",
        f"- **ε = {fmt(report['max_epsilon'])}** at δ = {fmt(report['delta'])} ({report['accountant']} accountant, "
        f"recomputed from the ledger: {fmt(report['epsilon_recomputed'])})",
        f"- mechanism: {report['mechanism']}",
        f"- privacy unit: {report['privacy_unit']}",
        *([f"- trust: {report['trust']}"] if report.get("trust") else []),
        *(
            [f"- items chosen: {chosen['count']}, from counts with noise multiplier {fmt(chosen['noise_multiplier'])}"]
            if (chosen := report.get("item_selection"))
            else []
        ),
        f"- ℓ2 sensitivity: {_sensitivities(report)}; a record's noise is its multiplier times it"
        + (" (above 1: SecAgg+'s quantisation, privacy/quantised_sum.py)" if report.get("secure_aggregation") else ""),
        "- released model: the release itself (one round; nothing is chosen among models)",
        *([f"- test {metric}: {test:.4f}"] if test is not None else []),
        *([f"- popularity baseline: test {metric} {report['popularity']:.4f}"] if report.get("popularity") else []),
        "",
        "| record | noise multiplier | sample rate | steps |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r['round']} | {fmt(r['noise_multiplier'])} | {fmt(r['sample_rate'])} | {r['steps']} |"
            for r in report["ledger"]
        ),
        "",
        *[f"**flagged: {flag}**" for flag in report["flags"]],
    ]
    return "\n".join(lines) + "\n"


def write_release_report(folder: Path) -> dict:
    """``privacy_report.json`` and ``.md`` of the release in ``folder``."""
    report = release_report(folder)
    (folder / "privacy_report.json").write_text(dumps(report, indent=2) + "\n")
    (folder / "privacy_report.md").write_text(release_markdown(report))
    return report


def _sensitivities(report: dict) -> str:
    """The released sums' ℓ2 sensitivities, in the ledger's order (item counts, then pairs)."""
    chosen = report.get("item_selection") or {}
    items = [f"{fmt(chosen.get('sensitivity_l2', 1.0))} (item counts)"] if chosen else []
    return ", ".join([*items, f"{fmt(report.get('sensitivity_l2', 1.0))} (pairs)"])
