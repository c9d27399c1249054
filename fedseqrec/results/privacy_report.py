"""Privacy reports of a run folder: ``privacy_report.json``, ``privacy_report.md`` and PNG plots, and the
privacy–utility curve over several runs. Everything is recomputed from the run folder (``fedseqrec report``)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from fedseqrec.data.tasks import Task, task_of
from fedseqrec.errors import UserError
from fedseqrec.jsonio import dumps
from fedseqrec.models.config import COUNTED_MODELS
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.config import DP_FEDAVG, USER_LEVEL
from fedseqrec.privacy.local_dpsgd import MECHANISM, PRIVACY_UNIT, SAMPLING, TOLERANCE, records_of
from fedseqrec.results.folder import RunFolder, data_identity, recorded_data, recorded_run
from fedseqrec.results.ledger_copies import check_against_other_copies
from fedseqrec.results.privacy_plots import fmt, plot_epsilon, plot_utility, pyplot
from fedseqrec.results.release_report import write_release_report

ONE_CLIENT_EACH = " The partitions built here put every user in exactly one client."
OVERLAP = (
    "the guarantee is per silo: a user whose events are held by k clients is covered by each of those clients' "
    "guarantees separately, and their total privacy loss is bounded only by composition — up to the sum of those "
    "clients' ε (and of their δ)." + ONE_CLIENT_EACH
)
OVERLAP_BY_MECHANISM = {  # (DP-SGD at every client: OVERLAP)
    DP_FEDAVG: "the unit is one client's update: a user whose events are held by k clients is k units, covered "
    "only by group privacy of size k (ε grows about k-fold)." + ONE_CLIENT_EACH,
    USER_LEVEL: "each silo clips a user's gradient on its own: a user whose events are held by k silos contributes k "
    "clipped gradients and is covered only by group privacy of size k (ε grows about k-fold)." + ONE_CLIENT_EACH,
}


def _recomputer():
    """ε of a ledger entry from its records alone (cached: one-release-per-round mechanisms give every client the
    same records)."""

    @functools.cache
    def composed(records: tuple, delta: float, accountant: str) -> float:
        return epsilon(list(records), delta, accountant)

    def of(entry: dict) -> float:
        return composed(tuple(records_of(entry)), float(entry["delta"]), entry["accountant"])

    return of


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable ({err})") from err


CLIENT_FIELDS = {
    "epsilon": (int, float),
    "epsilon_checked": (int, float),
    "delta": (int, float),
    "accountant": str,
    "budget": (int, float, type(None)),
    "status": str,
    "ledger": list,
}
RECORD_FIELDS = ("round", "noise_multiplier", "sample_rate", "steps")


def privacy_record_problem(privacy) -> str | None:
    """What ``privacy.json`` lacks of what the report reads (None: nothing): its clients, each with its figures
    and ledger records, and its per-round history."""
    if not isinstance(privacy, dict):
        return "not a JSON object"
    if not isinstance(privacy.get("clients"), dict):
        return "no 'clients' object"
    if not isinstance(privacy.get("history"), list) or any(
        not isinstance(h, dict) or "max_epsilon" not in h for h in privacy["history"]
    ):
        return "no 'history' list of rounds with their max_epsilon"
    for client, entry in privacy["clients"].items():
        if not str(client).isdigit() or not isinstance(entry, dict):
            return f"client {client!r} is not a client's record"
        for field, kinds in CLIENT_FIELDS.items():
            if field not in entry:
                return f"client {client}: no {field!r}"
            if not isinstance(entry[field], kinds) or isinstance(entry[field], bool):
                return f"client {client}: {field!r} is {entry[field]!r}"
        for record in entry["ledger"]:
            if not isinstance(record, dict) or any(k not in record for k in RECORD_FIELDS):
                return f"client {client}: a ledger record without {', '.join(RECORD_FIELDS)}"
    return None


def build_privacy_report(folder: Path) -> dict:
    privacy_options = recorded_run(folder).privacy  # (refuses what is not a federated run folder, saying why)
    privacy_path = folder / "privacy.json"
    if not privacy_path.exists():
        raise UserError(f"{folder}: this run has no privacy ledger (it was not run with --privacy)")
    privacy = _read_json(privacy_path)
    problem = privacy_record_problem(privacy)
    if problem is not None:
        raise UserError(
            f"{privacy_path}: {problem}: not a privacy record as fedseqrec writes it (edited, or cut short); the "
            "run's own ledger files and state.pt are what a report can be rebuilt from"
        )
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
    clients, flags = [], []
    audit = _audit_summary(folder)
    recompute = _recomputer()
    for client in sorted(privacy["clients"], key=int):
        entry = privacy["clients"][client]
        stored = max(entry["epsilon"], entry["epsilon_checked"])
        recomputed = recompute(entry)
        if not math.isclose(stored, recomputed, rel_tol=TOLERANCE, abs_tol=1e-9):
            flags.append(
                f"client {client}: stored ε {stored:.4g} disagrees with its {len(entry['ledger'])} records "
                f"({recomputed:.4g}); the report keeps the larger"
            )
        flags += [
            f"client {client}: its round-{r['round']} reply was refused ({r['reason']}); the update was not aggregated "
            "and its spend is counted from the server's plan"
            for r in entry.get("refusals", [])
        ]
        eps = max(stored, recomputed)
        budget = entry["budget"]
        status = entry["status"]
        if budget is not None and eps >= budget - 1e-9:
            status = "exhausted"
        clients.append(
            {
                "client": client,
                "epsilon": eps,
                "epsilon_reported": entry["epsilon"],
                "epsilon_rechecked": entry["epsilon_checked"],
                "epsilon_recomputed": recomputed,
                "delta": entry["delta"],
                "accountant": entry["accountant"],
                "budget": budget,
                "status": status,
                # a record covers one round (DP-SGD), or "rounds" of them (one release a round); round 0 is before
                "rounds_trained": sum(r.get("rounds", 1) for r in entry["ledger"] if r["round"] > 0),
                "ledger": entry["ledger"],
            }
        )
    flags += check_against_other_copies(folder, clients, recompute, TOLERANCE)
    largest = max((c["epsilon"] for c in clients), default=0.0)
    claimed = (metrics.get("privacy") or {}).get("max_epsilon")
    if claimed is not None and not math.isclose(claimed, largest, rel_tol=TOLERANCE, abs_tol=1e-9):
        flags.append(f"metrics.json claims largest ε {claimed:.4g}, the records give {largest:.4g}")
    stored_history = privacy["history"][-1]["max_epsilon"] if privacy["history"] else 0.0
    if not math.isclose(stored_history, largest, rel_tol=TOLERANCE, abs_tol=1e-9):
        flags.append(f"the stored per-round history ends at ε {stored_history:.4g}, the records give {largest:.4g}")
    return {
        "mechanism": privacy.get("mechanism", MECHANISM),
        "privacy_unit": privacy.get("privacy_unit", PRIVACY_UNIT),
        "client_sampling": privacy.get("sampling", SAMPLING),
        "trust": privacy.get("trust", "each client runs its own mechanism; the server sees each client's update"),
        "users_in_several_clients": OVERLAP_BY_MECHANISM.get(privacy_options.mechanism, OVERLAP),
        "public_users": privacy.get("public_users"),
        "public_only_test": (metrics.get("initial") or {}).get("test"),
        "item_selection": _without_rows(privacy.get("item_selection")),
        "model_release": _release_words(metrics),
        "accountant": privacy_options.accountant,
        "max_grad_norm": privacy_options.max_grad_norm,
        "target_epsilon": privacy_options.epsilon,
        "noise_multiplier": privacy_options.central_noise or privacy_options.noise_multiplier,
        "budget": privacy_options.budget or privacy_options.epsilon,
        "delta": max((c["delta"] for c in clients), default=None),
        "max_epsilon": largest,
        "aggregation": "per-client ε are listed and their maximum reported; they are never averaged",
        "rounds": len(privacy["history"]),
        "stopped": metrics.get("stopped"),
        "test": metrics.get("test"),
        "clients": clients,
        "history": privacy["history"],
        "utility": _utility(RunFolder(folder)),
        "metric": _task(folder).selection,
        "popularity": (metrics.get("popularity") or {}).get("valid", {}).get(_task(folder).selection),
        "notes": metrics.get("notes", []),
        "flags": flags + _audit_flags(audit),
        "audit": audit,
    }


def _without_rows(selection: dict | None) -> dict | None:
    return {k: v for k, v in selection.items() if k != "rows"} if selection else None


def _release_words(metrics: dict) -> str | None:
    """Which model the run released, and whether choosing it read data the guarantee does not cover."""
    release = metrics.get("release")
    if not release:
        return None
    done = f"round {release['round']} of {metrics.get('rounds_run', '?')}"
    if release["rule"] == "last":
        return f"{done}, the last round's: the choice reads no user data, the guarantee covers the released model"
    return (
        f"{done}, the best on validation items read in the clear (--release best-validation): that choice used "
        "users' data no ledger covers, so the guarantee holds for the training, not for the choice among rounds"
    )


def _audit_summary(folder: Path) -> dict | None:
    """The audit's figures (``audit.json``, without the per-canary scores), if the run was audited."""
    if not (folder / "audit.json").is_file():
        return None
    found = _read_json(folder / "audit.json")
    for part in ("canaries", "real_users"):
        if part in found:
            found[part] = {k: v for k, v in found[part].items() if k != "scores"}
    return found


def _audit_flags(audit: dict | None) -> list[str]:
    if not audit or audit.get("consistent") is not False:
        return []
    return [
        f"the audit's lower bound ε ≥ {audit['epsilon_lower_bound']:.4g} exceeds the claimed ε "
        f"{audit['claimed']['epsilon']:.4g}: a mechanism does not do what it is accounted for"
    ]


def _task(folder: Path) -> Task:
    return task_of(recorded_data(folder, find=False).task)


def _utility(folder: RunFolder) -> list[dict]:
    """The task's validation figure per round, under its name."""
    if not (folder.path / "config.json").is_file():
        raise UserError(f"{folder.path}: not a fedseqrec run folder (no config.json)")
    metric = _task(folder.path).selection
    return [{"round": r["round"], metric: r["valid"][metric]} for r in folder.rounds() if "valid" in r]


def _public_line(public: dict | None, alone: dict | None, test: dict | None, metric: str) -> list[str]:
    """The public users, and what the private rounds added to the model trained on them alone."""
    if not public:
        return []
    line = f"- **users declared public: {public['count']}** (share {public['share']:g}): {public['use']}"
    if alone and test and metric in alone and metric in test:
        before, after = alone[metric], test[metric]
        gain = f"{(after / before - 1) * 100:+.0f} %" if before > 0 else "n/a"
        line += f"; their model alone: test {metric} {before:.4f}, after the private rounds {after:.4f} ({gain})"
    return [line]


def _selection_line(selection: dict | None) -> list[str]:
    if not selection:
        return []
    return [f"- **item rows trained: {selection['count']}**: {selection['mechanism']}"]


def report_markdown(report: dict) -> str:
    lines = [
        "# Privacy report",
        "",
        f"- **largest ε over clients: {fmt(report['max_epsilon'])}** at δ ≤ {fmt(report['delta'])} "
        f"({report['accountant']} accountant; {report['aggregation']})",
        f"- mechanism: {report['mechanism']}",
        f"- privacy unit: {report['privacy_unit']}",
        f"- client sampling: {report['client_sampling']}",
        f"- trust: {report['trust']}",
        f"- users in several clients: {report['users_in_several_clients']}",
        *_public_line(report.get("public_users"), report.get("public_only_test"), report.get("test"), report["metric"]),
        *_selection_line(report.get("item_selection")),
        *([f"- released model: {report['model_release']}"] if report.get("model_release") else []),
        f"- budget per client: {fmt(report['budget'])}; rounds: {report['rounds']}"
        + (f"; stopped: {report['stopped']}" if report["stopped"] else ""),
        "",
        "| client | ε | δ | budget | status | rounds trained | noise multiplier | sample rate | steps |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c in report["clients"]:
        noises = sorted({r["noise_multiplier"] for r in c["ledger"]})
        rates = sorted({r["sample_rate"] for r in c["ledger"]})
        steps = sum(r["steps"] for r in c["ledger"])
        lines.append(
            f"| {c['client']} | {fmt(c['epsilon'])} | {fmt(c['delta'])} | {fmt(c['budget'])} | {c['status']} | "
            f"{c['rounds_trained']} | {', '.join(fmt(n) for n in noises)} | {', '.join(fmt(q) for q in rates)} "
            f"| {steps} |"
        )
    lines += _audit_lines(report.get("audit"))
    lines += [""] + [f"**{note}**" for note in report.get("notes", [])]
    lines += [f"**flagged: {flag}**" for flag in report.get("flags", [])]
    lines += ["", "Plots: `epsilon_per_round.png`, `ndcg_per_round.png`.", ""]
    return "\n".join(lines)


def _audit_lines(audit: dict | None) -> list[str]:
    if not audit:
        return []
    lines = [
        "",
        f"## Empirical audit ({audit['confidence']:.0%} confidence; plot: `audit.png`)",
        "",
        f"- claimed ε {fmt(audit['claimed']['epsilon'])}; empirical lower bound ε ≥ "
        f"{fmt(audit['epsilon_lower_bound'])}",
    ]
    for part, words in (("canaries", "canaries"), ("real_users", "audited real users")):
        found = audit.get(part)
        if found:
            lines.append(
                f"- {words}: {found['members']} trained on, {found['non_members']} not; {found['correct']} of "
                f"{found['guesses']} guesses right; ε ≥ {fmt(found['epsilon_lower_bound'])}; attack AUC "
                f"{found['auc']:.3f}, TPR at 1 % FPR {found['tpr_at_fpr_0.01']:.3f}"
            )
    return lines


def write_privacy_report(folder: Path, reference: Path | None = None) -> dict:
    """``reference``: the run folder of the same federation without DP, drawn beside this run's utility."""
    folder = Path(folder)
    if recorded_run(folder).model.name in COUNTED_MODELS:  # one release: no rounds, no per-client ledgers
        return write_release_report(folder)
    report = build_privacy_report(folder)
    (folder / "privacy_report.json").write_text(dumps(report, indent=2) + "\n")
    (folder / "privacy_report.md").write_text(report_markdown(report))
    plot_epsilon(report, folder / "epsilon_per_round.png")
    plot_utility(report, folder / "ndcg_per_round.png", _utility(RunFolder(reference)) if reference else None)
    return report


def compare_runs(folders: list[Path], out: Path, different_data: bool = False) -> list[dict]:
    """Test NDCG@10 (best round) against the largest ε of each run: the privacy–utility curve. Runs on other data
    (or cleaned, split or predicted otherwise) are refused unless ``different_data``."""
    identities = {data_identity(Path(f)) for f in folders}
    if len(identities) > 1 and not different_data:
        raise UserError(
            "the runs were trained on different data (or cleaned, split or predicted otherwise): one would be drawn "
            "as the other's reference; give --allow-different-data to draw them together anyway"
        )
    task = _task(Path(folders[0]))
    first, second = task.progress
    rows = []
    for folder in folders:
        metrics_path = Path(folder) / "metrics.json"
        if not metrics_path.exists():
            raise UserError(f"{folder}: no metrics.json (not a finished fedseqrec run folder)")
        metrics = _read_json(metrics_path)
        privacy = metrics.get("privacy")
        eps = privacy["max_epsilon"] if privacy else math.inf
        if privacy and (Path(folder) / "privacy.json").exists():
            eps = build_privacy_report(Path(folder))["max_epsilon"]  # recomputed from the records, not as stored
        rows.append(
            {
                "run": str(folder),
                "epsilon": eps,
                "test": {first: metrics["test"][first], second: metrics["test"][second]},
                "protocol": metrics.get("protocol", "full"),
            }
        )
    protocols = {r["protocol"] for r in rows}
    if len(protocols) > 1 and not different_data:
        raise UserError(
            f"the runs were evaluated under different protocols ({', '.join(sorted(protocols))}): their figures "
            "are not comparable (--allow-different-data draws them together anyway)"
        )
    rows.sort(key=lambda r: r["epsilon"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [r for r in rows if math.isfinite(r["epsilon"])]
    ax.plot([r["epsilon"] for r in finite], [r["test"][first] for r in finite], marker="o")
    for r in rows:
        if not math.isfinite(r["epsilon"]):
            ax.axhline(r["test"][first], color="grey", ls="--", lw=1, label=f"no DP ({Path(r['run']).name})")
    for r in finite:
        ax.annotate(Path(r["run"]).name, (r["epsilon"], r["test"][first]), fontsize=6)
    ax.set_xlabel("largest client ε")
    ax.set_ylabel(f"test {first}")
    ax.set_title("privacy–utility")
    if len(finite) < len(rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return rows
