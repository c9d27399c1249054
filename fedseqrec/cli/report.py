"""``fedseqrec report``: the privacy report of a run folder, or the privacy-utility curve of several."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedseqrec.cli.common import add_command
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
        rows = compare_runs([Path(r) for r in args.runs], out)
        print("| run | largest ε | test NDCG@10 | test HR@10 |")
        print("|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['run']} | {r['epsilon']:.3f} | {r['NDCG@10']:.4f} | {r['HR@10']:.4f} |")
        print(f"privacy–utility plot: {out.resolve()}")
        return 0
    if len(args.runs) != 1:
        raise UserError("fedseqrec report takes one RUN_DIR (or several with --compare)")
    folder = Path(args.runs[0])
    report = write_privacy_report(folder, Path(args.reference) if args.reference else None)
    print(f"largest ε {report['max_epsilon']:.4f} at δ ≤ {report['delta']:.3g} over {len(report['clients'])} clients")
    print(f"written {folder / 'privacy_report.json'}, privacy_report.md, epsilon_per_round.png, ndcg_per_round.png")
    for flag in report["flags"]:  # the figures were recomputed from the records; say which stored ones disagree
        print(f"flagged: {flag}", file=sys.stderr)
    return 1 if report["flags"] else 0


def register(commands: argparse._SubParsersAction) -> None:
    report = add_command(commands, "report", cmd_report)
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s)")
    report.add_argument("--compare", action="store_true", help="privacy-utility curve of several runs")
    report.add_argument("--out", default=None, help="with --compare: the PNG to write (default privacy_utility.png)")
    report.add_argument(
        "--reference", default=None, metavar="RUN_DIR", help="the same federation without DP, drawn beside the run"
    )
