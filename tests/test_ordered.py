"""Logs without timestamps (one sequence per line, one pair per line), the history-removed ranking protocol against
hand-computed ranks, and the exact counts of Amazon Beauty."""

import math
import re

import numpy as np
import pytest
import torch
from conftest import real_dataset, write

from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.formats import detect_format, load_interactions
from fedseqrec.errors import DataError, UserError
from fedseqrec.evaluation.evaluator import evaluate, evaluate_sums
from fedseqrec.models.pop import Popularity


def _sequence(ds, user_token: str) -> list[str]:
    seq = ds.sequences
    user = list(seq.vocab.users).index(user_token)
    return [str(seq.vocab.items[i]) for i in seq.sequence(user)]


def test_one_sequence_per_line_keeps_ids_order_and_leave_one_out_targets(tmp_path):
    path = write(tmp_path / "Toy.txt", "1 10 11 12 13\n2 11 10 14\n3 12 12 15 10 11\n")
    assert detect_format(path) == "sequences"
    ds = load_dataset(DataConfig(data=str(path)))
    assert (ds.sequences.n_users, ds.sequences.n_items, ds.sequences.n_interactions) == (3, 6, 12)
    assert _sequence(ds, "1") == ["10", "11", "12", "13"]
    assert _sequence(ds, "3") == ["12", "12", "15", "10", "11"]  # a repeated item stays: it is an event
    seq, split = ds.sequences, ds.split
    for token, (valid, test) in {"1": ("12", "13"), "2": ("10", "14"), "3": ("10", "11")}.items():
        user = list(seq.vocab.users).index(token)
        items = seq.sequence(user)
        assert str(seq.vocab.items[items[split.valid_pos[user]]]) == valid
        assert str(seq.vocab.items[items[split.test_pos[user]]]) == test
    assert ds.options["timestamps"] == "file order"


def test_one_pair_per_line_in_file_order_with_or_without_a_header(tmp_path):
    plain = write(tmp_path / "pairs.txt", "u1 b\nu2 a\nu1 a\nu2 c\nu1 c\n")
    headed = write(tmp_path / "pairs.csv", "user_id,item_id\nu1,b\nu2,a\nu1,a\nu2,c\nu1,c\n")
    for path in (plain, headed):
        assert detect_format(path) == "pairs"
        ds = load_dataset(DataConfig(data=str(path)))
        assert _sequence(ds, "u1") == ["b", "a", "c"] and _sequence(ds, "u2") == ["a", "c"]
    with pytest.raises(DataError, match="user 'u1' again"):  # read as sequences, a repeated user is refused
        load_interactions(plain, "sequences")


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("sequences", "1 10 11\n2\n", "line 2: user '2' has no items"),
        ("sequences", "1 10 11\n2 12 13\n1 14 15\n", "line 3: user '1' again (first on line 1)"),
        ("pairs", "u1 a\nu2 b c\n", "line 2: expected 2 fields (user item), found 3"),
        ("pairs", "user item\n", "a header and no interactions"),
        ("sequences", "\n\n", "the file is empty"),
    ],
)
def test_bad_ordered_logs_name_the_line(tmp_path, fmt, text, message):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError, match=re.escape(message)):
        load_interactions(path, fmt)


def test_bad_ordered_logs_through_the_command(cli, tmp_path):
    path = write(tmp_path / "bad.txt", "1 10 11\n1 12 13\n")
    result = cli("data", "stats", "--data", path, "--format", "sequences")
    assert result.code == 2 and "line 2: user '1' again" in result.err and "Traceback" not in result.err
    temporal = cli("data", "stats", "--data", write(tmp_path / "ok.txt", "1 10 11 12\n"), "--split", "temporal")
    assert temporal.code == 2 and "no timestamps" in temporal.err


# --- the history-removed protocol ---------------------------------------------------------------------------------


@pytest.fixture
def ranked(tmp_path):
    """Items 1..20 scored 30 - id (item 1 best); user A: 1 2 3 4 (test 4 after 1 2 3); user B: 5 1 5 (test 5,
    which B had before); user C holds the rest of the catalogue."""
    path = write(tmp_path / "ranks.txt", "A 1 2 3 4\nB 5 1 5\nC " + " ".join(str(i) for i in range(6, 21)) + "\n")
    ds = load_dataset(DataConfig(data=str(path)))
    seq = ds.sequences
    model = Popularity(seq.n_items)
    model.counts = torch.tensor([0.0] + [30.0 - int(seq.vocab.items[i]) for i in range(1, seq.n_items + 1)])
    return ds, model


def _metrics(ds, model, user: str, protocol: str) -> dict:
    users = np.array([list(ds.sequences.vocab.users).index(user)])
    return evaluate_sums(model, ds.sequences, ds.split, "test", users=users, protocol=protocol).result()


def test_history_removed_ranks_match_hand_computed_ones(ranked):
    ds, model = ranked
    # A's target 4 is fourth (1, 2, 3 score higher); with A's history {1, 2, 3} removed it is first.
    full = _metrics(ds, model, "A", "full")
    assert full["MRR@10"] == pytest.approx(1 / 4) and full["NDCG@10"] == pytest.approx(1 / math.log2(5))
    removed = _metrics(ds, model, "A", "full-history-removed")
    assert removed["MRR@10"] == pytest.approx(1.0) and removed["NDCG@10"] == pytest.approx(1.0)
    # B's target 5 occurs earlier in B's history: it stays in the ranking. 1 is removed (history); 2, 3, 4 still
    # score higher: rank 4. (Removing the target too would push it below every item: NDCG@10 0.)
    full = _metrics(ds, model, "B", "full")
    assert full["MRR@10"] == pytest.approx(1 / 5)
    removed = _metrics(ds, model, "B", "full-history-removed")
    assert removed["MRR@10"] == pytest.approx(1 / 4) and removed["NDCG@10"] == pytest.approx(1 / math.log2(5))


def test_history_removal_uses_the_whole_history_not_only_the_window(ranked):
    ds, model = ranked
    short = evaluate(model, ds.sequences, ds.split, "test", max_len=1, protocol="full-history-removed")
    long = evaluate(model, ds.sequences, ds.split, "test", max_len=50, protocol="full-history-removed")
    assert short == long


def test_runs_of_different_protocols_are_not_compared(tmp_path):
    import json

    from fedseqrec.results.privacy_report import compare_runs

    for name, protocol in (("a", "full"), ("b", "full-history-removed")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"run_config": {}}))
        metrics = {"protocol": protocol, "test": {"NDCG@10": 0.1, "HR@10": 0.2}, "privacy": {"max_epsilon": 1.0}}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match="different protocols"):
        compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "plot.png")


# --- Amazon Beauty itself -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def beauty():
    return real_dataset("amazon-beauty/Beauty.txt", "Amazon Beauty")


def test_amazon_beauty_loads_with_the_published_counts(cli, beauty):
    import json

    result = cli("data", "stats", "--data", beauty, "--json")
    assert result.code == 0, result.err
    stats = json.loads(result.out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["format"] == "sequences" and stats["time_span"] is None
    assert (stats["sequence_length"]["p0"], stats["sequence_length"]["p100"]) == (5, 204)
    assert (stats["split"]["valid_targets"], stats["split"]["test_targets"]) == (22_363, 22_363)


def test_runs_on_different_data_are_compared_only_when_told(tmp_path, cli):
    import json

    for name, users in (("a", 300), ("b", 400)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"run_config": {"shop-users": users}}))
        metrics = {"protocol": "full", "test": {"NDCG@10": 0.1, "HR@10": 0.2}, "privacy": None}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    result = cli("report", "--compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "plot.png")
    assert result.code == 2 and "different data" in result.err and not (tmp_path / "plot.png").exists()
    result = cli(
        "report", "--compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "plot.png", "--allow-different-data"
    )
    assert result.code == 0 and (tmp_path / "plot.png").is_file()
