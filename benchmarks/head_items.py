"""Where a private release can score: the share of a model's test NDCG@10 that comes from users whose test item is
among the K items with the most training events.

    python benchmarks/head_items.py beauty [--runs DIR] [--ks 250 500 1000 2000 4000]

The private co-occurrence model releases pairs over K items chosen by their noisy counts (K = 250 at ε = 1, 2,000
at ε = 8 on Beauty) and ranks every other item by its noisy count alone; user-level DP-SGD with `--item-rows K`
trains those K rows only. This script says how much of the best non-private model's figure comes from users whose
target is one of the K most frequent items (by their exact counts) — what a release that ranked those users' items
as well as the non-private model would reach — beside what the private releases reach on the same users.

Models: SASRec with `benchmarks/papers.py`'s `amazon` preset, seed 0 (DIR/sasrec-amazon-0/sasrec, trained when
missing: about 6 minutes on two cores); a co-occurrence release at ε = 1 and one at ε = 8 with the options of
`benchmarks/private_cooccurrence.py`, and the counted model without privacy (DIR/head-items/*, run when missing,
seconds each). Writes
benchmarks/results/head_items_beauty.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import papers
from benchmark_report import portable
from privacy_curve import DATA, RESULTS, ROOT, SETTINGS, run
from private_cooccurrence import chosen

from fedseqrec.data.dataset import Dataset, load_dataset
from fedseqrec.data.splits import training_item_counts
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.results.folder import recorded_data, recorded_protocol

FILE = DATA / "amazon-beauty" / "Beauty.txt"
KS = (250, 500, 1000, 2000, 4000)
RELEASES = {  # one release each (a draw of private_cooccurrence.py's points), with the options chosen there
    "cooc-no-dp": ("counted pairs without privacy, every item", []),
    "cooc-eps1": ("co-occurrence release, ε = 1 (K = 250)", ["--cooc-epsilon", "1", *chosen("beauty", 1)]),
    "cooc-eps8": ("co-occurrence release, ε = 8 (K = 2,000)", ["--cooc-epsilon", "8", *chosen("beauty", 8)]),
}


def head_rank(ds: Dataset) -> np.ndarray:
    """Each item id's rank by training events (0: the most frequent; ties by id); the padding id ranks last."""
    counts = training_item_counts(ds.sequences, ds.split)
    order = np.argsort(-counts[1:], kind="stable") + 1
    rank = np.full(len(counts), len(counts), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def users_with_test_items(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The users with a test target, and that target's item id."""
    seq, split = ds.sequences, ds.split
    users = np.flatnonzero(split.test_pos >= 0)
    users = users[users > 0]
    return users, seq.items[seq.offsets[users] + split.test_pos[users]]


def rank_bands(model, ds: Dataset, protocol: str, ks=KS, max_len: int = 50) -> dict:
    """The model's test NDCG@10 split by bands of the test item's rank among the training counts (1–K₁, K₁+1–K₂, …,
    below the last K): each band's share of the test users and its part of the figure (its users' NDCG@10 summed,
    divided by every test user), each user evaluated once; the parts add up to the model's figure."""
    users, targets = users_with_test_items(ds)
    ranks = head_rank(ds)
    rank, edges = ranks[targets], [0, *ks, len(ranks)]  # the last band: every item ranked below the last K
    rows = []
    for low, high in zip(edges, edges[1:], strict=False):
        among = users[(rank >= low) & (rank < high)]
        sums = evaluate_sums(model, ds.sequences, ds.split, "test", users=among, max_len=max_len, protocol=protocol)
        rows.append(
            {
                "test_item_rank": f"{low + 1}–{high}" if high != edges[-1] else f"below {low}",
                "users_share": len(among) / len(users),
                "NDCG@10": sums.sums.get("NDCG@10", 0.0) / len(users) if len(among) else 0.0,
            }
        )
    return {"test_NDCG@10": sum(row["NDCG@10"] for row in rows), "users": len(users), "bands": rows}


def measure(folder: Path, ks) -> dict:
    ds = load_dataset(recorded_data(folder))
    name, model = load_checkpoint(folder, ds.sequences)
    found = rank_bands(model, ds, recorded_protocol(folder), ks, model.cfg.max_len)
    return {"model": name, "folder": f"{folder.parent.name}/{folder.name}", **found}


def sasrec_folder(runs: Path, seed: int = 0) -> Path:
    """A seed of papers.py's amazon SASRec on Beauty (RUNS/sasrec-amazon-SEED/sasrec), trained here when its
    folder is missing: the run papers.py makes for that seed, kept."""
    folder = runs / f"sasrec-amazon-{seed}"
    if not (folder / "sasrec" / "metrics.json").exists():
        options = argparse.Namespace(max_seconds=1800.0, threads=0, device="cpu", eval_every=1)
        papers.run_seed("sasrec", str(FILE), "amazon", seed, options, folder)
    return folder / "sasrec"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["beauty"])
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "beauty")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    args = parser.parse_args()
    reference = "best non-private recipe (SASRec, papers.py amazon preset, seed 0)"
    models = {reference: sasrec_folder(args.runs)}
    for name, (label, flags) in RELEASES.items():
        models[label] = args.runs / "head-items" / name
        run(["train", *SETTINGS["beauty"]["pop"], "--model", "cooc", *flags], models[label])
    report = {"command": f"python benchmarks/head_items.py {args.dataset}", "models": {}, "rows": []}
    for label, folder in models.items():
        found = measure(folder, args.ks)
        report["models"][label] = {k: found[k] for k in ("model", "folder", "test_NDCG@10", "users")}
        for row in found["bands"]:
            share, ndcg = round(row["users_share"], 4), round(row["NDCG@10"], 4)
            report["rows"].append({"model": label, **row, "users_share": share, "NDCG@10": ndcg})
        print(label, f"{found['test_NDCG@10']:.4f}")
    sasrec = {r["test_item_rank"]: r["NDCG@10"] for r in report["rows"] if r["model"] == reference}
    for row in report["rows"]:
        mine, theirs = row["NDCG@10"], sasrec[row["test_item_rank"]]
        row["vs_sasrec"] = round(mine / theirs, 2) if theirs else None
        print(f"  {row['model'][:40]:<40} {row['test_item_rank']:>12}: {row['users_share']:.1%}, {mine:.4f}")
    out = RESULTS / f"head_items_{args.dataset}.json"
    out.write_text(json.dumps(portable(report, DATA), indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
