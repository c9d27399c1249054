"""``fedseqrec report``: the privacy report of a run folder, or the privacy-utility curve of several."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedseqrec.cli.common import add_command, add_data_location, add_device_option
from fedseqrec.errors import UserError
from fedseqrec.results.privacy_report import compare_runs, write_privacy_report


def cmd_report(args: argparse.Namespace) -> int:
    """privacy report of a run, or the privacy-utility curve of several

    Recompute every ε from the ledger records (exit 1 when a stored figure disagrees: the report keeps the
    larger and lists it under "flags"), and regenerate privacy_report.json / .md and the plots (ε per round,
    NDCG@10 per round, with the popularity baseline and, given --reference, the same federation without DP) of a
    private run's folder; with --compare, plot test NDCG@10 against the largest client ε of several runs.
    """
    if args.compare:
        out = Path(args.out or "privacy_utility.png")
        rows = compare_runs([Path(r) for r in args.runs], out, args.allow_different_data)
        names = list(rows[0]["test"])
        print("| run | largest ε | " + " | ".join(f"test {n}" for n in names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for r in rows:
            print(f"| {r['run']} | {r['epsilon']:.3f} | " + " | ".join(f"{r['test'][n]:.4f}" for n in names) + " |")
        print(f"privacy–utility plot: {out.resolve()}")
        return 0
    if len(args.runs) != 1:
        raise UserError("fedseqrec report takes one RUN_DIR (or several with --compare)")
    folder = Path(args.runs[0])
    report = write_privacy_report(folder, Path(args.reference) if args.reference else None)
    if "clients" in report:
        print(
            f"largest ε {report['max_epsilon']:.4f} at δ ≤ {report['delta']:.3g} over {len(report['clients'])} clients"
        )
        print(f"written {folder / 'privacy_report.json'}, privacy_report.md, epsilon_per_round.png, ndcg_per_round.png")
    else:  # one release (--model cooc): one ledger for every user
        print(f"ε {report['max_epsilon']:.4f} at δ = {report['delta']:.3g}, one release over every silo's users")
        print(f"written {folder / 'privacy_report.json'}, privacy_report.md")
    for flag in report["flags"]:  # the figures were recomputed from the records; say which stored ones disagree
        print(f"flagged: {flag}", file=sys.stderr)
    return 1 if report["flags"] else 0


def run_audit(folder: Path, data: str | None = None, found: dict | None = None, device: str = "auto") -> int:
    """Audit a finished run (``found``: the audit its ServerApp already made) and say what was found; exit status 1
    when the bound exceeds the claimed ε."""
    from fedseqrec.results.audit import audit_folder, audit_lines  # torch: not for building the parsers

    found = found if found is not None else audit_folder(folder, data, device)
    lines, flag = audit_lines(found)
    print("\n".join(lines) + f"; written {folder / 'audit.json'}, audit.png")
    if flag is not None:
        print(f"flagged: {flag}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """empirical privacy audit of a run trained with canaries

    Score every canary (--audit-canaries) and audited real user (--audit-users) of a finished run under its model,
    open the coins sealed when it started, and turn the guesses into an empirical lower bound on ε (Steinke, Nasr
    and Jagielski 2023, 95 % confidence) beside the ε the run claims, plus the membership-inference attack's AUC
    and TPR at low FPR. Writes audit.json and audit.png (and the privacy report of a private run). `train` and
    `simulate` run it themselves when they end; exit 1 when the bound exceeds the claimed ε.
    """
    return run_audit(Path(args.run), args.data, device=args.device)


def register(commands: argparse._SubParsersAction) -> None:
    audit = add_command(commands, "audit", cmd_audit)
    audit.add_argument("run", metavar="RUN_DIR", help="a run folder trained with --audit-canaries / --audit-users")
    add_data_location(audit)
    add_device_option(audit)
    report = add_command(commands, "report", cmd_report)
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s)")
    report.add_argument("--compare", action="store_true", help="privacy-utility curve of several runs")
    report.add_argument(
        "--allow-different-data",
        action="store_true",
        help="with --compare: draw runs trained on different data or protocols together",
    )
    report.add_argument("--out", default=None, help="with --compare: the PNG to write (default privacy_utility.png)")
    report.add_argument(
        "--reference", default=None, metavar="RUN_DIR", help="the same federation without DP, drawn beside the run"
    )
