"""The privacy–utility curve of the private co-occurrence model (`fedseqrec train --model cooc --cooc-epsilon E`)
on ml-100k or Amazon Beauty, no public users, beside the curve of user-level DP-SGD across 10 silos and private
popularity (both from benchmarks/privacy_curve.py's results), against the best model we build without privacy.

    python benchmarks/private_cooccurrence.py beauty  [--epsilons 0.5 1 2 4 8 16] [--draws 3] [--runs DIR]
    python benchmarks/private_cooccurrence.py ml-100k [...]   [--public-share 0.1]

The release is a sum over users of clipped vectors with the noise once on the total, so 10 silos adding up their
own users give the same release as one process: each point is one `fedseqrec train` run folder,
DIR/cooc-eps{E}-{draw} (the plain counted model: DIR/cooc-no-dp), run when missing and rebuilt from the folder alone
by privacy_curve.point (test NDCG@10, ε re-computed from the ledger by dp-accounting, RDP and PLD). The data and
the options are the same for every draw; only the noise differs (it never follows --seed), so a point's mean ± its
standard error over draws is the mechanism's spread, beside the test set's own bound √(NDCG/n). K
(--cooc-items) and --cooc-item-noise are the dataset's, chosen on validation (Beauty's K for each ε; benchmark notes).

The target's point (ε = 8) is also released by 10 IID silos through Flower (`fedseqrec simulate --partition iid
--clients 10 --model cooc --cooc-epsilon 8`: each silo sums its own users, the server adds the noise once;
DIR/cooc-fed10-eps8-{draw}), the same number of draws, beside the one-process figure.

With public users too (DIR/cooc-fed10-public{share}-eps8-{draw}). And under SecAgg+ (`--secure-aggregation`:
the server sees only the total over the silos; DIR/cooc-fed10-secagg-eps8-{draw}, --secure-draws of them), with
what SecAgg+ added to the release's sensitivity and its stages' seconds.

The same curve again with --public-share of the users declared public (--cooc-public-users: their pairs counted
exactly choose the pairs released for the others; DIR/cooc-public{share}-eps{E}-{draw}), each point beside the
public users' counts alone (the run folder's "initial" model) and the private users' gain over it. Writes
benchmarks/results/private_cooccurrence_{dataset}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmark_report import portable
from privacy_curve import DATA, RESULTS, ROOT, SETTINGS, best_non_private, finish, point, run

from fedseqrec.privacy.cooccurrence_options import default_items

# --cooc-items and --cooc-item-noise, chosen on validation (benchmark notes): ml-100k at ε = 8, one setting for every
# ε; Beauty's K grows with ε, 250·ε items between 125 and 2,000 (chosen at ε = 0.5, 1, 2, 4 and 8: a small ε
# affords the noise on the pairs of fewer items)
FEDERATED = "fedseqrec simulate --partition iid --clients 10 --model cooc …"
CHOSEN = {"ml-100k": ["--cooc-items", "400", "--cooc-item-noise", "40"]}


def chosen(dataset: str, epsilon: float) -> list[str]:
    """The dataset's --cooc-items and --cooc-item-noise at ``epsilon``."""
    if dataset == "beauty":  # (the default of --cooc-items, written out)
        return ["--cooc-items", str(default_items(epsilon))]
    return CHOSEN[dataset]


def summary(points: list[dict]) -> dict:
    values = [p["test_NDCG@10"] for p in points]
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {
        "epsilon": max(p["epsilon"] for p in points),
        "epsilon_dp_accounting_rdp": max(p["epsilon_dp_accounting_rdp"] for p in points),
        "epsilon_dp_accounting_pld": max(p["epsilon_dp_accounting_pld"] for p in points),
        "noise_multiplier": points[0]["noise_multiplier"],
        "test_NDCG@10": round(statistics.mean(values), 4),
        "standard_error_over_draws": None if spread is None else round(spread, 4),
        "standard_error_bound": points[0]["standard_error_bound"],
        "valid_NDCG@10": round(statistics.mean(p["valid_NDCG@10"] for p in points), 4),
        "draws": values,
    }


def with_public(points: list[dict]) -> dict:
    """A point of the public-users curve: the release over draws, and the public users' model (the same in every
    draw: no noise) with the private users' gain over it."""
    row = summary(points)
    alone = points[0]["public_only_test_NDCG@10"]
    row.update({"public_only_test_NDCG@10": alone, "gain_over_public_only": round(row["test_NDCG@10"] / alone - 1, 3)})
    return row


def secagg_costs(folder: Path) -> dict:
    """What SecAgg+ did to a release (its run folder): the pairs' sensitivity and each sum's stage seconds."""
    privacy = json.loads((folder / "metrics.json").read_text())["privacy"]
    phases = privacy["secure_aggregation"]["phases"]
    return {
        "sensitivity_l2": privacy["sensitivity_l2"],
        "secagg_seconds": round(sum(sum(p["stage_seconds"].values()) for p in phases.values()), 2),
    }


def _mean_costs(points: list[dict]) -> dict:
    return {
        "sensitivity_l2": points[0]["sensitivity_l2"],  # (the same for every draw: K and the silos are)
        "secagg_seconds": round(statistics.fmean(p["secagg_seconds"] for p in points), 2),
    }


def plot(
    rows: list[dict],
    federated: dict,
    public: list[dict],
    share: float,
    curve: dict,
    best: dict,
    plain: dict,
    dataset: str,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(points: list[dict], marker: str, label: str) -> None:
        eps, ndcg = [r["epsilon"] for r in points], [r["test_NDCG@10"] for r in points]
        ax.errorbar(eps, ndcg, yerr=[r["standard_error_bound"] for r in points], marker=marker, label=label)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    draw(rows, "o", "private co-occurrence (one release), no public users")
    draw([federated], "*", "the same released by 10 silos through Flower (simulate)")
    if public:
        draw(public, "D", f"private co-occurrence over the public users' pairs ({share:.0%} public)")
        alone = public[0]["public_only_test_NDCG@10"]
        ax.axhline(alone, color="tab:orange", linestyle=":", label="the public users' counts alone")
    sgd = [r for r in curve["rows"] if r["run"].startswith("eps")]
    pops = [r for r in curve["rows"] if r["run"].startswith("pop-")]
    sgd_label = "user-level DP-SGD, 10 silos"
    ax.plot([r["epsilon"] for r in sgd], [r["test_NDCG@10"] for r in sgd], marker="^", label=sgd_label)
    ax.plot([r["epsilon"] for r in pops], [r["test_NDCG@10"] for r in pops], marker="s", label="private popularity")
    ax.axhline(best["test_NDCG@10"], color="k", linestyle="--", label=f"best non-private: {best['model']}")
    ax.axhline(plain["test_NDCG@10"], color="tab:blue", linestyle="-.", label="co-occurrence without privacy")
    finish(fig, ax, curve["popularity_test_NDCG@10"], dataset, "ε (user-level)", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(SETTINGS))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--draws", type=int, default=3, help="releases per ε (the noise is all that differs)")
    parser.add_argument("--runs", default=None, help="folder of the run folders (default: benchmarks/runs/DATASET)")
    parser.add_argument("--public-share", type=float, default=0.1, help="users declared public (0: no such curve)")
    parser.add_argument("--secure-draws", type=int, default=3, help="releases of the ε = 8 point under SecAgg+")
    args = parser.parse_args()
    setting, users = SETTINGS[args.dataset], SETTINGS[args.dataset]["users"]
    runs = Path(args.runs or ROOT / "benchmarks" / "runs" / args.dataset)
    model = ["train", *setting["pop"], "--model", "cooc"]
    run(model, runs / "cooc-no-dp")
    rows = []
    for eps in args.epsilons:
        folders = [runs / f"cooc-eps{eps:g}-{draw}" for draw in range(args.draws)]
        for folder in folders:
            run([*model, "--cooc-epsilon", f"{eps:g}", *chosen(args.dataset, eps)], folder)
        rows.append(summary([point(folder, users) for folder in folders]))
    federated, federated_public = [], []
    simulate = ["simulate", *setting["data"], "--model", "cooc", "--cooc-epsilon", "8"]
    for draw in range(args.draws):
        run([*simulate, *chosen(args.dataset, 8)], runs / f"cooc-fed10-eps8-{draw}")
        federated.append(point(runs / f"cooc-fed10-eps8-{draw}", users))
        if args.public_share > 0:
            folder = runs / f"cooc-fed10-public{args.public_share:g}-eps8-{draw}"
            run([*simulate, "--cooc-public-users", f"{args.public_share:g}"], folder)
            federated_public.append(point(folder, users))
    secure = []
    for draw in range(args.secure_draws):
        folder = runs / f"cooc-fed10-secagg-eps8-{draw}"
        run([*simulate, *chosen(args.dataset, 8), "--secure-aggregation"], folder)
        secure.append({**point(folder, users), **secagg_costs(folder)})
    public = []
    for eps in args.epsilons if args.public_share > 0 else []:
        folders = [runs / f"cooc-public{args.public_share:g}-eps{eps:g}-{draw}" for draw in range(args.draws)]
        for folder in folders:
            run([*model, "--cooc-epsilon", f"{eps:g}", "--cooc-public-users", f"{args.public_share:g}"], folder)
        public.append(with_public([point(folder, users) for folder in folders]))
    plain = point(runs / "cooc-no-dp", users)
    best = best_non_private(
        args.dataset, runs, ((plain["test_NDCG@10"], "cooc counted without privacy (this benchmark)"),)
    )
    federated = summary(federated)
    federated_public = with_public(federated_public) if federated_public else None
    secure = {**summary(secure), **_mean_costs(secure)} if secure else None
    for row in [*rows, *public, federated, *(r for r in (federated_public, secure) if r)]:
        row["vs_best_non_private"] = round(row["test_NDCG@10"] / best["test_NDCG@10"], 3)
    curve = json.loads((RESULTS / f"privacy_curve_{args.dataset}.json").read_text())
    out = RESULTS / f"private_cooccurrence_{args.dataset}.json"
    plot(rows, federated, public, args.public_share, curve, best, plain, args.dataset, out.with_suffix(".png"))
    report = {
        "command": f"python benchmarks/private_cooccurrence.py {args.dataset} --draws {args.draws} "
        f"--secure-draws {args.secure_draws} --public-share {args.public_share:g}",
        "flags": model[1:],
        "cooc_items_by_epsilon": {f"{eps:g}": chosen(args.dataset, eps) for eps in args.epsilons},
        "draws": args.draws,
        "best_non_private": best,
        "cooc_without_privacy": {k: plain[k] for k in ("test_NDCG@10", "valid_NDCG@10", "standard_error_bound")},
        "rows": rows,
        "federated_10_silos": {
            "command": FEDERATED,
            **federated,
        },
        "federated_10_silos_secagg": secure and {"command": f"{FEDERATED} --secure-aggregation", **secure},
        "public_share": args.public_share,
        "federated_10_silos_public": federated_public,
        "public_rows": public,
        "plot": str(out.with_suffix(".png").relative_to(ROOT)),
    }
    out.write_text(json.dumps(portable(report, DATA), indent=2) + "\n")
    print(f"written {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
