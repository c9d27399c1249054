"""The privacy–utility curve of federation-wide user-level DP on ml-100k or Amazon Beauty (10 IID silos, no public
users), against the best model we build without privacy on the same data and protocol, popularity and private
popularity at the same ε; and at ε = 8 the same recipe with every item row noised, with the item tables frozen, and
with 10 % of the users declared public (beside the public users' model alone).

    python benchmarks/privacy_curve.py ml-100k [--epsilons 0.5 1 2 4 8 16] [--runs DIR] [--only]
    python benchmarks/privacy_curve.py beauty  [--epsilons ...] [--variants rows dense frozen public] [--runs DIR]
    python benchmarks/privacy_curve.py DATASET --reference-only

Each point is a `fedseqrec simulate` run folder DIR/eps{E} (variants: DIR/{variant}-eps8; private popularity:
DIR/pop-eps{E}; ml-100k's federation without DP: DIR/no-dp); a folder that already holds metrics.json is read, not
run again, so the curve can be built in pieces (``--only``: run the missing points, write nothing). A point is
rebuilt from its folder alone (:func:`point`): the released model's test NDCG@10 (a private run releases its last
round: no choice reads validation data) and its ε recomputed from the ledger by Google's dp-accounting (RDP and
PLD), an accountant independent of the Opacus one that set the noise. The standard error beside each figure is
the bound √(NDCG/n) over the n test users (a user's NDCG is in [0, 1], so its variance is at most its mean).
Every ratio is to the best model built without privacy on the same data and protocol (:func:`best_non_private`:
any seed of any centralized model, or the federation without DP); ``--reference-only`` recomputes that reference,
the ratios and the plot from the points already written, when a better non-private model has been built since.
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
RESULTS = ROOT / "benchmarks" / "results"
# The recipe of each dataset: today's best non-private model settings (tied items, full cross-entropy) under
# user-level DP; the item rows that train are chosen privately (--item-rows).
SETTINGS = {
    "ml-100k": {
        "users": 943,
        "data": ["--data", str(DATA / "ml-100k"), "--partition", "iid", "--clients", "10"],
        "no_dp": ["--rounds", "100", "--eval-every", "10"],
        "private": [
            "--privacy", "user-level", "--users-per-round", "300", "--rounds", "150", "--strategy", "fedadam",
            "--server-lr", "0.01", "--max-grad-norm", "0.3", "--eval-every", "10", "--tie-items",
            "--item-rows", "800",
        ],
        "pop": ["--data", str(DATA / "ml-100k")],
    },
    "beauty": {
        "users": 22363,
        "data": [
            "--data", str(DATA / "amazon-beauty" / "Beauty.txt"), "--protocol", "full-history-removed",
            "--partition", "iid", "--clients", "10",
        ],
        "private": [
            "--privacy", "user-level", "--users-per-round", "2000", "--rounds", "60", "--strategy", "fedadam",
            "--server-lr", "0.01", "--max-grad-norm", "0.3", "--eval-every", "20", "--tie-items",
            "--item-rows", "2000",
        ],
        "pop": ["--data", str(DATA / "amazon-beauty" / "Beauty.txt"), "--protocol", "full-history-removed"],
    },
}  # fmt: skip # flags as typed
VARIANTS = {  # at ε = 8, each against the recipe: what the sparse rows and the public users are worth
    "rows": [],
    "dense": ["--item-rows", None],  # every item row trains and is noised
    "frozen": ["--item-rows", None, "--freeze", "items"],  # no item row trains (nor is noised)
    # 10 % of users declared public: the initial model is theirs, and the private rounds refine it gently
    "public": ["--public-users", "0.1", "--server-lr", "0.001"],
}


def with_variant(flags: list[str], variant: list) -> list[str]:
    """``flags`` with the variant's options set (``None``: the option removed with its value)."""
    flags = list(flags)
    for name, value in zip(variant[::2], variant[1::2], strict=True):
        if name in flags:
            at = flags.index(name)
            del flags[at : at + 2]
        if value is not None:
            flags += [name, value]
    return flags


def run(command: list[str], folder: Path) -> None:
    if (folder / "metrics.json").exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    print("running", " ".join(command), flush=True)
    subprocess.run([sys.executable, "-m", "fedseqrec.cli", *command, "--out", str(folder)], check=True)


def independent(ledger: list[dict], delta: float) -> tuple[float, float]:
    """(RDP, PLD) ε of a ledger's records, composed in order, by dp-accounting."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    rdp, pld = rdp_privacy_accountant.RdpAccountant(), pld_privacy_accountant.PLDAccountant()
    for record in ledger:
        event = dp_event.PoissonSampledDpEvent(
            record["sample_rate"], dp_event.GaussianDpEvent(record["noise_multiplier"])
        )
        for accountant in (rdp, pld):
            accountant.compose(dp_event.SelfComposedDpEvent(event, record["steps"]))
    return rdp.get_epsilon(delta), pld.get_epsilon(delta)


def _ledger(report: dict) -> list[dict]:
    """The records of the largest ε: a run's report lists clients, the private popularity's one release."""
    if "clients" in report:
        return max(report["clients"], key=lambda c: c["epsilon"])["ledger"]
    return report["ledger"]


def point(folder: Path, users: int) -> dict:
    """One point of the curve, from its run folder alone."""
    metrics = json.loads((folder / "metrics.json").read_text())
    ndcg = metrics["test"]["NDCG@10"]
    row = {
        "run": folder.name,
        "test_NDCG@10": round(ndcg, 4),
        "standard_error_bound": round(math.sqrt(ndcg / users), 4),
        "test_HR@10": round(metrics["test"]["HR@10"], 4),
        "valid_NDCG@10": round(metrics["valid"]["NDCG@10"], 4),
        "released_round": metrics.get("best_round"),
        "release": (metrics.get("release") or {}).get("rule"),
        "seconds": metrics.get("seconds"),
    }
    if "initial" in metrics:  # the public users' model, before the private rounds
        row["public_only_test_NDCG@10"] = round(metrics["initial"]["test"]["NDCG@10"], 4)
    report_path = folder / "privacy_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        ledger = _ledger(report)
        rdp, pld = independent(ledger, report["delta"])
        rounds = [r for r in ledger if r["sample_rate"] < 1.0 or r["round"] > 0]
        row.update(
            epsilon=round(report["max_epsilon"], 4),
            delta=report["delta"],
            epsilon_dp_accounting_rdp=round(rdp, 4),
            epsilon_dp_accounting_pld=round(pld, 4),
            noise_multiplier=(rounds or ledger)[-1]["noise_multiplier"],
            sample_rate=(rounds or ledger)[-1]["sample_rate"],
            item_rows=(report.get("item_selection") or {}).get("count"),
        )
    return row


def centralized(dataset: str) -> list[tuple[float, str]]:
    """Each centralized model's best test NDCG@10 on ``dataset``: the best seed of benchmarks/papers.py (the best
    model we have built, not the average one), and the single seeds of the earlier benchmarks (beauty.json,
    centralized.json)."""
    found = []
    if dataset == "beauty":
        old = RESULTS / "beauty.json"
        for row in json.loads(old.read_text())["rows"] if old.exists() else []:
            found.append((row, row["test"]["NDCG@10"], " (one seed, beauty.json)"))
    else:
        for row in json.loads((RESULTS / "centralized.json").read_text())["rows"]:
            if row["data"] == dataset:
                found.append((row, row["test"]["NDCG@10"], " (benchmarks/centralized.py)"))
    papers = RESULTS / f"papers_{dataset}.json"
    for row in json.loads(papers.read_text())["rows"] if papers.exists() else []:
        found.append((row, max(row["test"]["NDCG@10"]["per_seed"]), ", best seed (benchmarks/papers.py)"))
    return [(value, f"centralized {row['model']}{source}") for row, value, source in found if row["model"] != "pop"]


def federation_without_dp(dataset: str, runs: Path) -> tuple[float, str] | None:
    """The federation without DP on the same data: ml-100k's no-dp run folder (or, without it, the figure this
    script recorded from it), Beauty's best FedAvg of benchmarks/fedavg_gap.py."""
    if dataset == "beauty":
        summary = json.loads((RESULTS / "fedavg_gap_beauty.json").read_text())["summary"]
        federated = [(k, v) for k, v in summary.items() if k.startswith("federated/")]
        name, fed = max(federated, key=lambda kv: kv[1]["mean"])
        return fed["mean"], f"FedAvg over 10 silos, {name} (benchmarks/fedavg_gap.py beauty)"
    name = "FedAvg over 10 silos without DP (privacy_curve.py's no-dp run)"
    if (runs / "no-dp" / "metrics.json").exists():
        return point(runs / "no-dp", SETTINGS[dataset]["users"])["test_NDCG@10"], name
    recorded = RESULTS / f"privacy_curve_{dataset}.json"
    stored = json.loads(recorded.read_text()).get("federation_without_dp") if recorded.exists() else None
    return (stored["test_NDCG@10"], name) if stored else None


def best_non_private(dataset: str, runs: Path, extra: tuple[tuple[float, str], ...] = ()) -> dict:
    """The reference of every privacy–utility ratio: the best model built without privacy on the same data and
    protocol — the better of the best centralized model (any seed), the federation without DP and ``extra`` (a
    benchmark's own non-private model) — with every candidate named."""
    candidates = [*centralized(dataset), *filter(None, [federation_without_dp(dataset, runs)]), *extra]
    value, name = max(candidates)
    return {"test_NDCG@10": round(value, 4), "model": name, "candidates": [list(c) for c in candidates]}


def plot(rows: list[dict], reference: dict, popularity: float, dataset: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r for r in rows if r["run"].startswith("eps")]
    pops = [r for r in rows if r["run"].startswith("pop-")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar(
        [r["epsilon"] for r in models],
        [r["test_NDCG@10"] for r in models],
        yerr=[r["standard_error_bound"] for r in models],
        marker="o",
        label="user-level DP across 10 silos, no public users",
    )
    ax.plot([r["epsilon"] for r in pops], [r["test_NDCG@10"] for r in pops], marker="s", label="private popularity")
    ax.axhline(reference["test_NDCG@10"], color="k", linestyle="--", label=f"best non-private: {reference['model']}")
    finish(fig, ax, popularity, dataset, "ε (user-level, whole federation)", out)


def finish(fig, ax, popularity: float, dataset: str, epsilon_label: str, out: Path) -> None:
    """The popularity line, log-2 ε axis, labels and legend; the figure written to ``out``."""
    ax.axhline(popularity, color="grey", linestyle=":", label="popularity, no DP")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(epsilon_label)
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{dataset}: privacy–utility")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: it covers no curve
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(SETTINGS))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v != "rows"], choices=list(VARIANTS))
    parser.add_argument("--runs", default=None, help="folder of the run folders (default: benchmarks/runs/DATASET)")
    parser.add_argument("--only", action="store_true", help="run the missing points, do not write the curve")
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="keep the points already written (their run folders may be elsewhere): recompute only the best "
        "non-private reference, the ratios to it and the plot",
    )
    args = parser.parse_args()
    setting = SETTINGS[args.dataset]
    runs = Path(args.runs or ROOT / "benchmarks" / "runs" / args.dataset)
    if args.reference_only:
        args.epsilons = args.variants = []  # nothing is run
    if "no_dp" in setting and not args.reference_only:
        run(["simulate", *setting["data"], *setting["no_dp"]], runs / "no-dp")
    for eps in args.epsilons:
        run(["simulate", *setting["data"], *setting["private"], "--epsilon", f"{eps:g}"], runs / f"eps{eps:g}")
        run(["train", *setting["pop"], "--model", "pop", "--pop-epsilon", f"{eps:g}"], runs / f"pop-eps{eps:g}")
    for variant in args.variants:
        flags = with_variant(setting["private"], VARIANTS[variant])
        run(["simulate", *setting["data"], *flags, "--epsilon", "8"], runs / f"{variant}-eps8")
    if args.only:
        return
    out = RESULTS / f"privacy_curve_{args.dataset}.json"
    if args.reference_only:
        report = json.loads(out.read_text())
    else:
        report = curve(args.dataset, runs, args.epsilons, args.variants)
    reference = best_non_private(args.dataset, runs)
    for row in report["rows"]:
        row["vs_best_non_private"] = round(row["test_NDCG@10"] / reference["test_NDCG@10"], 3)
    federated = federation_without_dp(args.dataset, runs)
    report.update(
        best_non_private=reference,
        federation_without_dp=federated and {"test_NDCG@10": federated[0], "model": federated[1]},
        plot=str(out.with_suffix(".png").relative_to(ROOT)),
    )
    plot(report["rows"], reference, report["popularity_test_NDCG@10"], args.dataset, out.with_suffix(".png"))
    out.write_text(json.dumps(portable(report, DATA), indent=2) + "\n")
    print(f"written {out} and {out.with_suffix('.png')}")


def curve(dataset: str, runs: Path, epsilons: list[float], variants: list[str]) -> dict:
    """The curve's points, each rebuilt from its run folder, with the run's flags."""
    users = SETTINGS[dataset]["users"]
    rows = [point(runs / f"{kind}eps{eps:g}", users) for eps in epsilons for kind in ("", "pop-")]
    rows += [point(runs / f"{variant}-eps8", users) for variant in variants]
    popularity = json.loads((runs / f"eps{epsilons[0]:g}" / "metrics.json").read_text())["popularity"]
    return {
        "command": f"python benchmarks/privacy_curve.py {dataset}",
        "flags": {k: v for k, v in SETTINGS[dataset].items() if k != "users"},
        "variants": {v: VARIANTS[v] for v in variants},
        "popularity_test_NDCG@10": round(popularity["test"]["NDCG@10"], 4),
        "rows": rows,
    }


if __name__ == "__main__":
    main()
