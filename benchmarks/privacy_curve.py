"""The privacy–utility curve of federation-wide user-level DP: test NDCG@10 against ε, with the private popularity
baseline at the same ε, the same federation without DP and popularity, on ml-100k or Amazon Beauty (10 IID silos).

    python benchmarks/privacy_curve.py ml-100k [--epsilons 0.5 1 2 4 8 16] [--runs DIR] [--only]
    python benchmarks/privacy_curve.py beauty  [--epsilons ...] [--runs DIR] [--only]

Each point is a `fedseqrec simulate` run folder DIR/eps{E} (the no-DP federation: DIR/no-dp; private popularity:
DIR/pop-eps{E}); a folder that already holds metrics.json is read, not run again, so the curve can be built in
pieces (``--only``: run the missing points and stop without writing the curve). Every point's ε is recomputed from
its ledger by Google's dp-accounting (RDP and PLD) — an accountant independent of the Opacus one that set the noise.
Writes benchmarks/results/privacy_curve_{dataset}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from benchmark_report import portable

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
SETTINGS = {
    "ml-100k": {
        "data": ["--data", str(DATA / "ml-100k"), "--partition", "iid", "--clients", "10"],
        "no_dp": ["--rounds", "100", "--eval-every", "10"],
        "private": [
            "--privacy",
            "user-level",
            "--users-per-round",
            "300",
            "--rounds",
            "150",
            "--strategy",
            "fedadam",
            "--server-lr",
            "0.01",
            "--max-grad-norm",
            "0.3",
            "--eval-every",
            "10",
        ],
        "pop": ["--data", str(DATA / "ml-100k")],
    },
    "beauty": {
        "data": [
            "--data",
            str(DATA / "amazon-beauty" / "Beauty.txt"),
            "--protocol",
            "full-history-removed",
            "--loss",
            "sampled",
            "--negatives",
            "256",
            "--partition",
            "iid",
            "--clients",
            "10",
        ],
        "no_dp": ["--rounds", "60", "--eval-every", "5"],
        "private": [
            "--privacy",
            "user-level",
            "--users-per-round",
            "2000",
            "--rounds",
            "60",
            "--strategy",
            "fedadam",
            "--server-lr",
            "0.001",
            "--max-grad-norm",
            "0.3",
            "--public-users",
            "0.1",
            "--freeze",
            "items",
            "--eval-every",
            "10",
        ],
        "pop": ["--data", str(DATA / "amazon-beauty" / "Beauty.txt"), "--protocol", "full-history-removed"],
    },
}


def run(command: list[str], folder: Path) -> None:
    if (folder / "metrics.json").exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    print("running", " ".join(command), flush=True)
    subprocess.run([sys.executable, "-m", "fedseqrec.cli", *command, "--out", str(folder)], check=True)


def independent(report: dict) -> tuple[float, float]:
    """(RDP, PLD) ε of the report's ledger by dp-accounting."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    ledger = _ledger(report)
    rdp, pld = rdp_privacy_accountant.RdpAccountant(), pld_privacy_accountant.PLDAccountant()
    for record in ledger:
        event = dp_event.PoissonSampledDpEvent(
            record["sample_rate"], dp_event.GaussianDpEvent(record["noise_multiplier"])
        )
        for accountant in (rdp, pld):
            accountant.compose(dp_event.SelfComposedDpEvent(event, record["steps"]))
    return rdp.get_epsilon(report["delta"]), pld.get_epsilon(report["delta"])


def _ledger(report: dict) -> list[dict]:
    """The records of the largest ε: a run's report lists clients, the private popularity's one release."""
    if "clients" in report:
        return max(report["clients"], key=lambda c: c["epsilon"])["ledger"]
    return report["ledger"]


def point(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    row = {
        "run": folder.name,
        "test_NDCG@10": round(metrics["test"]["NDCG@10"], 4),
        "test_HR@10": round(metrics["test"]["HR@10"], 4),
        "valid_NDCG@10": round(metrics["valid"]["NDCG@10"], 4),
        "best_round": metrics.get("best_round"),
        # the best round is chosen on validation items the server evaluates in the clear, outside the guarantee:
        # the last round is the figure that needs no such choice
        "last_test_NDCG@10": round(metrics["last"]["test"]["NDCG@10"], 4) if "last" in metrics else None,
        "seconds": metrics.get("seconds"),
        "popularity_test_NDCG@10": round(metrics.get("popularity", {}).get("test", {}).get("NDCG@10", math.nan), 4),
    }
    if "initial" in metrics:
        row["initial_test_NDCG@10"] = round(metrics["initial"]["test"]["NDCG@10"], 4)
    report_path = folder / "privacy_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        rdp, pld = independent(report)
        ledger = _ledger(report)
        row.update(
            epsilon=round(report["max_epsilon"], 4),
            delta=report["delta"],
            epsilon_dp_accounting_rdp=round(rdp, 4),
            epsilon_dp_accounting_pld=round(pld, 4),
            noise_multiplier=ledger[0]["noise_multiplier"],
            sample_rate=ledger[0]["sample_rate"],
        )
    return row


def plot(rows: list[dict], no_dp: dict, dataset: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r for r in rows if not r["run"].startswith("pop-")]
    pops = [r for r in rows if r["run"].startswith("pop-")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(
        [r["epsilon"] for r in models],
        [r["test_NDCG@10"] for r in models],
        marker="o",
        label="sasrec, user-level DP across 10 silos",
    )
    ax.plot([r["epsilon"] for r in pops], [r["test_NDCG@10"] for r in pops], marker="s", label="private popularity")
    ax.axhline(no_dp["test_NDCG@10"], color="k", linestyle="--", label="same federation, no DP (ε = ∞)")
    ax.axhline(no_dp["popularity_test_NDCG@10"], color="grey", linestyle=":", label="popularity, no DP")
    initial = [r["initial_test_NDCG@10"] for r in models if "initial_test_NDCG@10" in r]
    if initial:
        ax.axhline(sum(initial) / len(initial), color="tab:green", linestyle="-.", label="public users' model alone")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (user-level, whole federation)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{dataset}: privacy–utility")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(SETTINGS))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--runs", default=None, help="folder of the run folders (default: benchmarks/runs/DATASET)")
    parser.add_argument("--only", action="store_true", help="run the missing points, do not write the curve")
    args = parser.parse_args()
    setting = SETTINGS[args.dataset]
    runs = Path(args.runs or ROOT / "benchmarks" / "runs" / args.dataset)
    run(["simulate", *setting["data"], *setting["no_dp"]], runs / "no-dp")
    for eps in args.epsilons:
        run(["simulate", *setting["data"], *setting["private"], "--epsilon", f"{eps:g}"], runs / f"eps{eps:g}")
        run(["train", *setting["pop"], "--model", "pop", "--pop-epsilon", f"{eps:g}"], runs / f"pop-eps{eps:g}")
    if args.only:
        return
    no_dp = point(runs / "no-dp")
    rows = [point(runs / f"{kind}eps{eps:g}") for eps in args.epsilons for kind in ("", "pop-")]
    for row in rows:
        row["vs_no_dp"] = round(row["test_NDCG@10"] / no_dp["test_NDCG@10"], 3)
    out = ROOT / "benchmarks" / "results" / f"privacy_curve_{args.dataset}.json"
    plot(rows, no_dp, args.dataset, out.with_suffix(".png"))
    flags = {k: v for k, v in setting.items()}
    report = {
        "command": f"python benchmarks/privacy_curve.py {args.dataset}",
        "flags": flags,
        "no_dp": no_dp,
        "rows": rows,
        "plot": str(out.with_suffix(".png").relative_to(ROOT)),
    }
    out.write_text(json.dumps(portable(report, DATA), indent=2) + "\n")
    print(f"written {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
