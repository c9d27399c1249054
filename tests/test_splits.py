"""Leave-one-out and temporal splits, by hand and against RecBole's split of ml-100k."""

import gzip

import numpy as np
import pandas as pd
import pytest
from test_cleaning import log_of

from fedseqrec.data import DataConfig, load_dataset
from fedseqrec.data.cleaning import clean
from fedseqrec.data.sequences import build_sequences
from fedseqrec.data.splits import leave_one_out_split, temporal_split, training_item_counts
from fedseqrec.errors import UserError


def sequences(rows):
    events, _ = clean(log_of(rows))
    return build_sequences(events)


def test_leave_one_out_positions():
    seq = sequences([("a", f"i{t}", t) for t in range(5)] + [("b", "x", 1), ("b", "y", 2)] + [("c", "z", 1)])
    split = leave_one_out_split(seq)
    # users sort as a, b, c -> ids 1, 2, 3
    assert split.train_end.tolist() == [0, 3, 1, 1]
    assert split.valid_pos.tolist() == [-1, 3, -1, -1]
    assert split.test_pos.tolist() == [-1, 4, 1, -1]
    assert (split.n_valid, split.n_test, split.n_train_interactions) == (1, 2, 5)
    a = seq.sequence(1)
    assert seq.vocab.items[a[split.test_pos[1]]] == "i4" and seq.vocab.items[a[split.valid_pos[1]]] == "i3"


def test_training_item_counts_by_hand_and_by_users():
    seq = sequences([*[("a", i, t) for t, i in enumerate("xyxzyx")], ("b", "y", 1), ("b", "z", 2), ("b", "w", 3)])
    split = leave_one_out_split(seq)  # a trains on x y x z, b on y
    ids = {name: list(seq.vocab.items).index(name) for name in "wxyz"}
    counts = training_item_counts(seq, split)
    assert counts[0] == 0 and counts.sum() == split.n_train_interactions == 5
    assert [counts[ids[n]] for n in "wxyz"] == [0, 2, 2, 1]
    first, second = (training_item_counts(seq, split, np.array([u])) for u in (1, 2))
    assert [first[ids[n]] for n in "wxyz"] == [0, 2, 1, 1] and [second[ids[n]] for n in "wxyz"] == [0, 0, 1, 0]
    assert (first + second).tolist() == counts.tolist()


def test_temporal_split_at_quantiles():
    # timestamps 0..9 for user a, 5 and 9.5 for b: cuts at quantiles 0.5 and 0.75 of all 12 timestamps
    seq = sequences([("a", f"i{t}", t) for t in range(10)] + [("b", "x", 5), ("b", "y", 9.5)])
    split = temporal_split(seq, 0.5, 0.75)
    valid_cut, test_cut = np.quantile(seq.timestamps, [0.5, 0.75])
    # sorted: 0 1 2 3 4 5 5 6 7 8 9 9.5 -> median between the two 5s, 0.75 at 7 + 0.25 * (8 - 7)
    assert (valid_cut, test_cut) == (5.0, 7.25)
    assert split.train_end.tolist() == [0, 5, 0]  # a: t0..t4; b: nothing before 5
    assert split.valid_pos.tolist() == [-1, 5, -1]  # a: first event in [5, 7.25) is t5; b has no history for it
    assert split.test_pos.tolist() == [-1, 8, 1]  # a: t8 is the first after the cut; b: 9.5, with t5 before it


def test_temporal_split_refuses_bad_quantiles():
    seq = sequences([("a", "x", 1), ("a", "y", 2)])
    with pytest.raises(UserError, match="quantile"):
        temporal_split(seq, 0.9, 0.5)


def test_ml100k_leave_one_out_counts_and_recbole_agreement(ml100k, shared_anchors):
    ds = load_dataset(DataConfig(data=str(ml100k)))
    assert (ds.sequences.n_users, ds.sequences.n_items, ds.sequences.n_interactions) == (943, 1682, 100_000)
    assert (ds.split.n_valid, ds.split.n_test) == (943, 943)
    with gzip.open(shared_anchors / "recbole_ml100k_split.tsv.gz", "rt") as handle:
        recbole = pd.read_csv(handle, sep="\t", dtype=str)
    seq, vocab = ds.sequences, ds.sequences.vocab
    user_id = {token: i for i, token in enumerate(vocab.users)}
    same_test = same_valid = 0
    for row in recbole.itertuples():
        u = user_id[row.user_id]
        items = vocab.items[seq.sequence(u)]
        same_test += items[ds.split.test_pos[u]] == row.test_target
        same_valid += items[ds.split.valid_pos[u]] == row.valid_target
    # The anchors' README: a stable time sort with file order on ties matches RecBole on 939 / 938 users
    # (RecBole's float32-normalised timestamps merge a few distinct times).
    assert (same_test, same_valid) == (939, 938)
