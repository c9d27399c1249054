"""Compressed client updates and downloads (`--compression`, `--download-compression`) against float32 on a FedAvg
federation of Amazon Beauty.

    python benchmarks/compressed_updates.py [--modes none fp16 int8 int4 int4/int4 topk:0.1 topk:0.05] [--rounds 8]
                                            [--seeds 0 [1 2]] [--out benchmarks/results/compressed_updates.json]

A mode is `UP[:SHARE][/DOWN]`: `--compression UP` (`--topk-share SHARE`) and `--download-compression DOWN` (none
when not given). `fedseqrec simulate --partition iid --clients 10` on Beauty with the Beauty preset (papers.py's
amazon flags for SASRec, constant rate), 4 local epochs at batch 64 a round as the FedAvg benchmark's best plain
variant, the same seed for every mode: the same partition, initial model and batches, so the modes differ only by
what is sent. For each mode: the mean bytes of a client's reply a round (the arrays' data, as the server received
them) and of what the server sent it (`broadcast_bytes`: round 1 sends whole weights), the bytes of a round both
ways over the 10 clients, test NDCG@10 of the best validation round, and its loss relative to `none` of the same
seed. Rows are merged into the JSON by mode and seed (every mode of a seed runs from the same partition and initial
model, so modes and seeds can be measured one at a time); `summary` gives each mode's figures over the seeds it was
measured with, mean ± standard deviation (issue 30: every headline figure over three seeds).
Targets (issue 30): ≥ 4× fewer bytes a round at ≤ 1 % relative loss of test NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmark_report import spread, write_report
from papers import AMAZON_FIT, AMAZON_MODEL

from fedseqrec.federated.config import RunConfig
from fedseqrec.simulation.engine import simulate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDSEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
BEAUTY = str(DATA / "amazon-beauty" / "Beauty.txt")


def run(mode: str, rounds: int, seed: int, tmp: Path) -> dict:
    up, _, down = mode.partition("/")
    name, _, share = up.partition(":")
    compression = {"compression": name, "download_compression": down or "none"}
    compression |= {"topk_share": float(share)} if share else {}
    federation = {"partition": "iid", "clients": 10, "rounds": rounds, "eval_every": 2}
    fit = {**AMAZON_FIT, "batch_size": 64, "local_epochs": 4, "protocol": "full-history-removed", "threads": 1}
    cfg = RunConfig.of(data=BEAUTY, seed=seed, **AMAZON_MODEL, **fit, **federation, **compression)
    start = time.perf_counter()
    results, folder = simulate(cfg, out=tmp / f"{mode.replace(':', '-').replace('/', '-')}-{seed}")
    rounds_run = list(folder.rounds())
    uploads = [r["update_bytes"] for r in rounds_run if "update_bytes" in r]
    downloads = [r["broadcast_bytes"] for r in rounds_run if "broadcast_bytes" in r]
    reply, sent = round(sum(uploads) / len(uploads)), round(sum(downloads) / len(downloads))
    return {
        "mode": mode,
        "seed": seed,
        "client_reply_bytes": reply,
        "client_download_bytes": sent,
        "round_upload_bytes": reply * 10,
        "round_download_bytes": sent * 10,
        "round_bytes": (reply + sent) * 10,
        "test": {k: round(results["test"][k], 4) for k in ("NDCG@10", "HR@10")},
        "best_round": results["best_round"],
        "valid_by_round": [[r["round"], round(r["valid"]["NDCG@10"], 4)] for r in rounds_run if "valid" in r],
        "seconds": round(time.perf_counter() - start, 1),
    }


def merged(out: Path, rows: list[dict]) -> list[dict]:
    """The rows already in ``out`` (by mode and seed; a row without a seed ran from seed 0, the default then; a row
    measured before downloads were counted sent whole float32 weights), with ``rows`` in place of those of their
    mode and seed."""
    earlier = json.loads(out.read_text())["rows"] if out.exists() else []
    fresh = {(row["mode"], row["seed"]) for row in rows}
    for row in earlier:
        row.setdefault("seed", 0)
        if "round_bytes" not in row:
            row["client_download_bytes"] = row["round_download_bytes"] // 10
            row["round_bytes"] = row["round_upload_bytes"] + row["round_download_bytes"]
    return [row for row in earlier if (row["mode"], row["seed"]) not in fresh] + rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's bytes and test NDCG@10 against the float32 row (``none``) of its seed, where there is one."""
    base = {row["seed"]: row for row in rows if row["mode"] == "none"}
    for row in rows:
        if row["seed"] in base:
            full = base[row["seed"]]
            row["bytes_ratio"] = round(full["client_reply_bytes"] / row["client_reply_bytes"], 2)
            row["round_bytes_ratio"] = round(full["round_bytes"] / row["round_bytes"], 2)
            row["relative_ndcg_loss"] = round(1 - row["test"]["NDCG@10"] / full["test"]["NDCG@10"], 4)
    return rows


def summary(rows: list[dict]) -> dict:
    """Each mode's figures over the seeds it was measured with (mean ± standard deviation, and each seed's)."""
    out = {}
    for mode in dict.fromkeys(row["mode"] for row in rows):
        runs = sorted((r for r in rows if r["mode"] == mode and "relative_ndcg_loss" in r), key=lambda r: r["seed"])
        if not runs:
            continue
        figures = {
            "test_NDCG@10": [r["test"]["NDCG@10"] for r in runs],
            "relative_ndcg_loss": [r["relative_ndcg_loss"] for r in runs],
            "round_bytes_ratio": [r["round_bytes_ratio"] for r in runs],
        }
        out[mode] = {"seeds": [r["seed"] for r in runs], "commands": list(dict.fromkeys(r["command"] for r in runs))}
        out[mode] |= {name: spread(values) for name, values in figures.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = ["none", "fp16", "int8", "int4", "int4/int4", "topk:0.1", "topk:0.05"]
    parser.add_argument("--modes", nargs="+", default=modes)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compressed_updates.json")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in options.seeds:
            for mode in options.modes:
                rows.append(run(mode, options.rounds, seed, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["command"] = " ".join(["python benchmarks/compressed_updates.py", *sys.argv[1:]])
    rows = with_ratios(merged(options.out, rows))
    for row in rows:  # rows measured before rows named their command: by the defaults of that day
        row.setdefault("command", "python benchmarks/compressed_updates.py")
    # the defaults measure every row again
    write_report(
        options.out, "compressed_updates", "python benchmarks/compressed_updates.py", rows, summary=summary(rows)
    )
    for row in rows:
        print(
            row["mode"],
            row["seed"],
            row.get("round_bytes_ratio"),
            row["test"]["NDCG@10"],
            row.get("relative_ndcg_loss"),
        )


if __name__ == "__main__":
    main()
