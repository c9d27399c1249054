"""The private popularity baseline: bounded contribution per user, calibrated noise, ε re-checked independently."""

import json

import numpy as np
import pytest
from helpers import TINY, independent_epsilons

from fedseqrec.data.splits import make_split
from fedseqrec.federated.task import cached_dataset
from fedseqrec.privacy.popularity import private_popularity, user_item_counts


def test_one_user_moves_the_counts_by_at_most_the_root_of_their_item_cap():
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    counts = user_item_counts(seq, split, items_per_user=5)
    for user in (1, 7, 30):
        without = split.train_end.copy()
        without[user] = 0  # the user's history gone
        removed = make_split(seq, "leave-one-out")
        removed.train_end[:] = without
        change = counts - user_item_counts(seq, removed, items_per_user=5)
        assert set(np.unique(change)) <= {0.0, 1.0} and np.linalg.norm(change) <= 5**0.5 + 1e-9
        assert change.sum() == min(5, len(np.unique(seq.sequence(user)[: split.train_end[user]])))


@pytest.mark.parametrize("target", [0.5, 1.0, 8.0])
def test_its_epsilon_rechecks_with_an_independent_accountant(target):
    ds = cached_dataset(TINY.data)
    _, record = private_popularity(ds.sequences, ds.split, target, 1e-5, items_per_user=10)
    assert record["max_epsilon"] <= target * 1.001
    rdp, pld = independent_epsilons([(record["noise_multiplier"], 1.0, 1)], 1e-5)
    assert record["max_epsilon"] == pytest.approx(rdp, rel=0.01) and record["max_epsilon"] >= pld * 0.99


def test_train_pop_with_an_epsilon_writes_its_privacy_record(cli, tmp_path):
    result = cli("train", "--shop-users", "120", "--model", "pop", "--pop-epsilon", "2", "--out", tmp_path / "pp")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "pp" / "privacy_report.json").read_text())
    assert report["max_epsilon"] <= 2.0 and report["ledger"] == [
        {"round": 1, "noise_multiplier": report["noise_multiplier"], "sample_rate": 1.0, "steps": 1}
    ]
    assert json.loads((tmp_path / "pp" / "metrics.json").read_text())["privacy"]["items_per_user"] == 20
