"""The empirical privacy audit against the ε each run claims: without DP, with each mechanism, and broken.

    python benchmarks/privacy_audit.py [--rows NAME ...] [--out benchmarks/results/privacy_audit.json]

Every row is one `fedseqrec train` or `simulate` run with canaries (`--audit-canaries`: random histories, each
trained on by a fair coin) and, where named, audited real users (`--audit-users`, the membership attack); the
audit runs at its end (95 % confidence, one-run method of Steinke, Nasr and Jagielski 2023). ml-100k runs use the
defaults of the commands unless the row says otherwise; `shop` is the generator with 2,000 users. `broken-dpsgd`
runs the same federation with a ClientApp whose DP-SGD gets no noise while its ledgers still record σ (the fault of
tests/faults.py, injected from outside the package): the audit must exceed the claimed ε there and nowhere else.
The audit's cost is its training run (the canaries are m more users) plus the scoring, both recorded per row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmark_report import machine

from fedseqrec.cli import build_parser
from fedseqrec.cli import main as fedseqrec
from fedseqrec.cli.federate import run_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the broken mechanism lives with the tests, never in the package
from faults import broken_client_app  # noqa: E402

DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
ML = ["--data", str(DATA / "ml-100k")]
SHOP = ["--data", "shop", "--shop-users", "2000", "--shop-items", "500"]
SILOS = ["simulate", *ML, "--partition", "iid", "--clients", "10", "--rounds", "20", "--eval-every", "5"]
ROWS = {
    "ml-100k-train": ["train", *ML, "--audit-canaries", "300", "--audit-users", "200"],
    "shop-train": ["train", *SHOP, "--audit-canaries", "500", "--audit-users", "300"],
    "ml-100k-fedavg": [*SILOS, "--audit-canaries", "300", "--audit-users", "200"],
    "ml-100k-dpsgd-eps8": [*SILOS, "--privacy", "dp-sgd", "--epsilon", "8", "--audit-canaries", "300"],
    "ml-100k-user-dp-eps8": [
        *SILOS[:-4],
        "--rounds",
        "60",
        "--eval-every",
        "20",
        "--privacy",
        "user-level",
        "--users-per-round",
        "300",
        "--epsilon",
        "8",
        "--strategy",
        "fedadam",
        "--server-lr",
        "0.01",
        "--max-grad-norm",
        "0.3",
        "--audit-canaries",
        "300",
    ],
    "ml-100k-dp-fedavg": [
        "simulate",
        *ML,
        "--partition",
        "per-user",
        "--clients-per-round",
        "100",
        "--rounds",
        "20",
        "--eval-every",
        "10",
        "--privacy",
        "dp-fedavg",
        "--central-noise",
        "1.0",
        "--audit-canaries",
        "300",
    ],
    "broken-dpsgd": [
        *SILOS,
        "--privacy",
        "dp-sgd",
        "--noise-multiplier",
        "10",
        "--local-epochs",
        "3",
        "--audit-canaries",
        "300",
    ],
}


def run(name: str, tmp: Path) -> dict:
    out = tmp / name
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if name.startswith("broken"):
            from fedseqrec.simulation.engine import simulate

            args = build_parser().parse_args([*ROWS[name], "--out", str(out)])
            simulate(run_config(args), out=out, client_app=broken_client_app())
            code = fedseqrec(["audit", str(out)])
        else:
            code = fedseqrec([*ROWS[name], "--out", str(out)])
    seconds = time.perf_counter() - start
    found = json.loads((out / "audit.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    row = {
        "row": name,
        "command": "fedseqrec " + " ".join(ROWS[name]).replace(str(DATA), "../shared/data"),
        "exit_code": code,
        "claimed_epsilon": found["claimed"]["epsilon"],
        "delta": found["claimed"]["delta"],
        "epsilon_lower_bound": found["epsilon_lower_bound"],
        "consistent": found["consistent"],
        "test_NDCG@10": round(metrics["test"]["NDCG@10"], 4),
        "seconds": round(seconds, 1),  # the whole command: training with the canaries, then the audit
        "audit_seconds": found["seconds"],  # scoring and statistics after training
    }
    for part in ("canaries", "real_users"):
        if part in found:
            f = found[part]
            row[part] = {
                k: f[k]
                for k in (
                    "members",
                    "non_members",
                    "guesses",
                    "correct",
                    "epsilon_lower_bound",
                    "auc",
                    "tpr_at_fpr_0.01",
                    "tpr_at_fpr_0.001",
                )
            }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "privacy_audit.json")
    args = parser.parse_args()
    report = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            row = run(name, Path(tmp))
            report["rows"] = [r for r in report["rows"] if r["row"] != name] + [row]
            report["machine"] = machine()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
