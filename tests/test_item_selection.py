"""Sparse private item rows (``--item-rows``, in the spirit of DP-FEST) and the release rule of a private run
(``--release``): the selection's sensitivity and its cost in the ledger, rows left out getting neither update nor
noise, and a default release that no unaccounted choice picked."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import TINY, TINY_FLAGS, Nodes, benchmark_script, flat, independent_epsilons, model_and_windows

from fedseqrec.data.splits import training_item_counts, training_items
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.federated.task import cached_dataset
from fedseqrec.models.pop import Popularity
from fedseqrec.privacy.item_selection import item_counts, select_items
from fedseqrec.privacy.noisy_sum import NoisySum
from fedseqrec.privacy.per_user import Contribution, clipped_update_sum
from fedseqrec.privacy.user_level import item_row_masks, silo_contribution
from fedseqrec.simulation.engine import simulate

SPARSE = TINY.replace(
    mechanism="user-level", users_per_round=60, epsilon=8.0, rounds=2, item_rows=20, selection_noise=2.0
)


def _curve_script():
    return benchmark_script("privacy_curve")


def test_adding_or_removing_one_user_moves_the_item_counts_by_at_most_one():
    ds = cached_dataset(TINY.data)
    users = np.arange(1, ds.sequences.n_users + 1)
    everyone = item_counts(ds.sequences, ds.split, users)
    for left_out in (1, 7, 50):
        rest = item_counts(ds.sequences, ds.split, users[users != left_out])
        moved = np.linalg.norm(everyone - rest)
        assert moved == pytest.approx(1.0, rel=1e-9)  # a user with any training item moves them by exactly 1


def test_the_selection_takes_the_largest_counts_and_never_the_padding():
    counts = np.array([1e9, 5.0, 100.0, 3.0, 90.0, 0.0])
    chosen = select_items(counts, 2, noise_multiplier=1e-6)
    assert chosen.rows.tolist() == [2, 4]
    assert chosen.record() == {"round": 0, "noise_multiplier": 1e-6, "sample_rate": 1.0, "steps": 1}
    noisy = [select_items(counts, 2, noise_multiplier=200.0).rows.tolist() for _ in range(30)]
    assert len({tuple(r) for r in noisy}) > 1  # the noise is real: the choice varies
    assert all(0 not in r for r in noisy)


def test_rows_left_out_get_no_contribution_and_the_sum_still_moves_by_at_most_c():
    model, windows = model_and_windows("sasrec", tie_items=True)
    rows = [3, 5, 8, 13]
    masks = item_row_masks(model, rows)
    assert set(masks) == {"item_embedding.weight", "scorer.bias"}  # the tied scorer keeps a bias per item
    chosen, clip = np.arange(10), 0.05
    everyone, norms, _ = clipped_update_sum(model, windows, chosen, Contribution(clip), masks)
    for key in masks:
        table = everyone[key]
        left_out = torch.ones(table.shape[0], dtype=torch.bool)
        left_out[rows] = False
        assert table[left_out].abs().max().item() == 0.0 and table[~left_out].abs().max().item() > 0
    assert (norms > clip).all()
    for leave_out in (0, 6):
        rest, _, _ = clipped_update_sum(model, windows, np.delete(chosen, leave_out), Contribution(clip), masks)
        assert (flat(everyone) - flat(rest)).norm().item() == pytest.approx(clip, rel=1e-3)


def test_a_silos_noise_share_leaves_the_rows_left_out_alone():
    model, windows = model_and_windows("sasrec", tie_items=True)
    reply = silo_contribution(model, windows, 0.0, Contribution(1.0), noise_std=1.0, rows=[2, 4])
    tables = ("item_embedding.weight", "scorer.bias")
    for key in tables:
        table = reply.total[key].reshape(reply.total[key].shape[0], -1)
        assert set(torch.nonzero(table.abs().sum(dim=1)).flatten().tolist()) == {2, 4}
    assert all(t.abs().sum() > 0 for n, t in reply.total.items() if n not in tables)


def _reply(values) -> Message:
    metrics = MetricRecord({"num-examples": 1, "partition-id": 0})
    arrays = ArrayRecord({"table": torch.tensor(values, dtype=torch.float64), "w": torch.zeros(3, dtype=torch.float64)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=1, message_type="train")


def test_the_server_noises_only_the_rows_that_train():
    strategy = NoisySum(
        keys=["table", "w"],
        expected_users=1.0,
        noise_std=1.0,
        rows=lambda: {"table": np.array([1, 3])},
        min_available_nodes=0,
        min_train_nodes=0,
    )
    start = {"table": torch.ones(5, 2, dtype=torch.float64), "w": torch.zeros(3, dtype=torch.float64)}
    strategy.configure_train(1, ArrayRecord(start), ConfigRecord({}), Nodes([]))
    arrays, _ = strategy.aggregate_train(1, [_reply(np.zeros((5, 2)))])
    table = arrays["table"].numpy()
    assert np.array_equal(table[[0, 2, 4]], np.ones((3, 2)))  # no update, no noise: bit-identical
    assert (table[[1, 3]] != 1.0).all() and (arrays["w"].numpy() != 0.0).all()


@pytest.mark.slow
def test_a_sparse_run_trains_only_the_chosen_rows_and_its_ledger_holds_the_selection(tmp_path):
    results, folder = simulate(SPARSE.replace(tie_items=True), out=tmp_path / "run")
    privacy = json.loads((folder.path / "privacy.json").read_text())
    rows = privacy["item_selection"]["rows"]
    assert len(rows) == 20 and privacy["item_selection"]["count"] == 20
    ledger = privacy["clients"]["0"]["ledger"]
    assert ledger[0] == {"round": 0, "noise_multiplier": 2.0, "sample_rate": 1.0, "steps": 1}
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in ledger]
    report = json.loads((folder.path / "privacy_report.json").read_text())
    rdp, pld = independent_epsilons(records, report["delta"])
    assert report["max_epsilon"] == pytest.approx(rdp, rel=0.01) and report["max_epsilon"] >= pld * 0.99
    assert report["max_epsilon"] <= 8.0 and not report["flags"]
    assert report["item_selection"]["count"] == 20 and "rows" not in report["item_selection"]
    # the selection's cost is in ε: the same rounds without it would spend less
    rounds_only, _ = independent_epsilons(records[1:], report["delta"])
    assert rounds_only < report["max_epsilon"]
    # rows not chosen: the initial weights exactly; chosen rows moved
    torch.manual_seed(SPARSE.data.seed)
    from fedseqrec.federated.task import build_global_model

    initial = build_global_model(cached_dataset(SPARSE.data).sequences, SPARSE.replace(tie_items=True).model)
    # the curve script rebuilds this point from the folder alone, ε re-checked by dp-accounting
    point = _curve_script().point(folder.path, users=120)
    metrics = json.loads((folder.path / "metrics.json").read_text())
    assert point["test_NDCG@10"] == round(metrics["test"]["NDCG@10"], 4) and point["release"] == "last"
    assert point["epsilon"] == round(report["max_epsilon"], 4) and point["item_rows"] == 20
    assert point["epsilon_dp_accounting_rdp"] == pytest.approx(rdp, abs=1e-4)
    assert point["noise_multiplier"] == ledger[-1]["noise_multiplier"] and point["sample_rate"] == 60 / 120
    last = torch.load(folder.path / "model_last.pt")
    for key in ("item_embedding.weight", "scorer.bias"):
        before, after = initial.state_dict()[key], last[key]
        kept = torch.ones(before.shape[0], dtype=torch.bool)
        kept[rows] = False
        assert torch.equal(before[kept], after[kept])
        assert not torch.equal(before[rows], after[rows])


@pytest.mark.slow
def test_a_private_run_releases_its_last_round_unless_told_otherwise(tmp_path, cli):
    default = cli(
        "simulate", *TINY_FLAGS, "--privacy", "user-level", "--users-per-round", "60", "--noise-multiplier", "1",
        "--rounds", "3", "--eval-every", "1", "--out", tmp_path / "last",
    )  # fmt: skip
    assert default.code == 0, default.err
    assert "released round 3 of 3, the last" in default.out
    folder = tmp_path / "last"
    model, last = torch.load(folder / "model.pt"), torch.load(folder / "model_last.pt")
    assert all(torch.equal(model[k], last[k]) for k in model)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["release"] == {"rule": "last", "round": 3, "reads_validation": False, "covered_by_guarantee": True}
    assert json.loads((folder / "model_info.json").read_text())["round"] == 3
    assert "the choice reads no user data" in (folder / "privacy_report.md").read_text()

    chosen = cli(
        "simulate", *TINY_FLAGS, "--privacy", "user-level", "--users-per-round", "60", "--noise-multiplier", "1",
        "--rounds", "3", "--eval-every", "1", "--release", "best-validation", "--out", tmp_path / "best",
    )  # fmt: skip
    assert chosen.code == 0, chosen.err
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert metrics["release"]["rule"] == "best-validation" and not metrics["release"]["covered_by_guarantee"]
    report = (tmp_path / "best" / "privacy_report.md").read_text()
    assert "no ledger covers" in report


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--item-rows", "10"], "--item-rows needs --privacy user-level"),
        (
            ["--privacy", "user-level", "--users-per-round", "10", "--epsilon", "4", "--item-rows", "10",
             "--noise-shares", "clients"],
            "--noise-shares server",
        ),
        (
            ["--privacy", "user-level", "--users-per-round", "10", "--epsilon", "4", "--item-rows", "10",
             "--freeze", "items"],
            "drop one",
        ),
        (
            ["--privacy", "user-level", "--users-per-round", "10", "--epsilon", "0.2", "--item-rows", "10",
             "--selection-noise", "0.5"],
            "give it more noise",
        ),
        (["--release", "first"], "is not one of last, best-validation"),
    ],
)  # fmt: skip
def test_bad_selection_options(cli, tmp_path, flags, message):
    result = cli("simulate", *TINY_FLAGS, *flags, "--out", tmp_path / "run")
    assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


def test_the_curves_reference_is_the_best_non_private_model_any_seed_any_engine(tmp_path, monkeypatch):
    curve = _curve_script()
    monkeypatch.setattr(curve, "RESULTS", tmp_path)

    def write(name: str, report: dict) -> None:
        (tmp_path / name).write_text(json.dumps(report))

    def seeds(model: str, *values: float) -> dict:
        return {"model": model, "test": {"NDCG@10": {"mean": sum(values) / len(values), "per_seed": list(values)}}}

    write("centralized.json", {"rows": [{"data": "ml-100k", "model": "gru4rec", "test": {"NDCG@10": 0.056}}]})
    write("papers_ml-100k.json", {"rows": [seeds("sasrec", 0.0595, 0.0630, 0.0543), seeds("pop", 0.07)]})
    # the federation's own figure, recorded by an earlier curve (its run folder is elsewhere)
    write("privacy_curve_ml-100k.json", {"federation_without_dp": {"test_NDCG@10": 0.0524}})
    best = curve.best_non_private("ml-100k", tmp_path / "runs")
    # the best seed, not the mean (0.0589), and never popularity
    assert best["test_NDCG@10"] == 0.063 and best["model"] == "centralized sasrec, best seed (benchmarks/papers.py)"
    assert [0.0524, "FedAvg over 10 silos without DP (privacy_curve.py's no-dp run)"] in best["candidates"]
    assert not any("pop" in name for _, name in best["candidates"])
    # a benchmark's own non-private model competes too, and wins when it is better
    counted = curve.best_non_private("ml-100k", tmp_path / "runs", ((0.0641, "cooc counted"),))
    assert counted["test_NDCG@10"] == 0.0641 and counted["model"] == "cooc counted"


def test_head_items_split_a_models_ndcg_by_where_its_users_targets_rank():
    script = benchmark_script("head_items")
    ds = cached_dataset(TINY.data)
    popularity = Popularity(ds.sequences.n_items).fit(training_items(ds.sequences, ds.split))
    counts = training_item_counts(ds.sequences, ds.split)[1:]
    ordered = np.sort(counts)[::-1]
    strict = next(k for k in range(10, len(ordered)) if ordered[k - 1] > ordered[k])  # no tie across the cut
    ks = (1, 5, strict)
    found = script.rank_bands(popularity, ds, "full", ks=ks, max_len=20)
    users, targets = script.users_with_test_items(ds)
    rank = script.head_rank(ds)
    assert sorted(rank[1:]) == list(range(ds.sequences.n_items)) and rank[0] > ds.sequences.n_items - 1
    assert counts[rank[1:].argsort()].tolist() == ordered.tolist()  # rank 0 is the most frequent item
    bands = found["bands"]
    assert [b["test_item_rank"] for b in bands] == ["1–1", "2–5", f"6–{strict}", f"below {strict}"]
    edges = [0, *ks, ds.sequences.n_items]
    hand = [float(np.mean((rank[targets] >= a) & (rank[targets] < b))) for a, b in zip(edges, edges[1:], strict=False)]
    assert [b["users_share"] for b in bands] == pytest.approx(hand) and sum(hand) == pytest.approx(1.0)
    # the parts add up to the model's own figure, every user counted once
    whole = evaluate(popularity, ds.sequences, ds.split, "test", max_len=20, protocol="full")["NDCG@10"]
    assert found["test_NDCG@10"] == pytest.approx(whole) and found["users"] == len(users)
    # popularity ranks every user's items in the same order: all of its NDCG@10 comes from targets in its top 10
    assert whole > 0 and bands[-1]["NDCG@10"] == 0 and 0 < bands[0]["NDCG@10"] < whole
