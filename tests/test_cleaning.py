"""Cleaning, contiguous ids, chronological sequences and truncation, on hand-made tables."""

import numpy as np
import pandas as pd

from fedseqrec.data.cleaning import CleaningOptions, clean, k_core, keep_most_recent
from fedseqrec.data.interactions import Interactions, make_table
from fedseqrec.data.sequences import PAD, build_sequences


def log_of(rows, ratings=None) -> Interactions:
    users, items, times = zip(*rows, strict=True)
    return Interactions(
        make_table(
            pd.Series(users, dtype=object),
            pd.Series(items, dtype=object),
            np.array(times, float),
            rating=None if ratings is None else np.array(ratings, float),
        ),
        source="hand",
    )


def test_missing_ids_and_exact_duplicates_are_dropped():
    log = log_of([("a", "x", 1), (None, "y", 2), ("a", None, 3), ("a", "x", 1), ("a", "x", 2)])
    events, report = clean(log)
    assert report.missing_ids == 2 and report.duplicates == 1
    assert list(zip(events["item"], events["timestamp"], strict=True)) == [("x", 1.0), ("x", 2.0)]


def test_rating_threshold_keeps_ratings_at_or_above():
    log = log_of([("a", "x", 1), ("a", "y", 2), ("a", "z", 3)], ratings=[3, 4, 5])
    events, report = clean(log, CleaningOptions(min_rating=4))
    assert events["item"].tolist() == ["y", "z"] and report.below_rating == 1


def test_k_core_iterates_to_a_fixed_point():
    # Item z has one interaction; dropping it leaves user c with one, whose removal leaves item y with one...
    rows = [("a", "x", 1), ("a", "w", 2), ("b", "x", 1), ("b", "w", 2), ("c", "y", 1), ("c", "z", 2), ("d", "y", 1)]
    events, rounds = k_core(log_of(rows).events, user_core=2, item_core=2)
    assert sorted(set(events["user"])) == ["a", "b"] and sorted(set(events["item"])) == ["w", "x"]
    assert rounds >= 3
    counts_u = events["user"].value_counts()
    counts_i = events["item"].value_counts()
    assert counts_u.min() >= 2 and counts_i.min() >= 2


def test_chronological_order_is_stable_on_ties():
    log = log_of([("a", "late", 5), ("a", "tie1", 3), ("b", "q", 1), ("a", "tie2", 3), ("a", "early", 1)])
    events, _ = clean(log)
    seq = build_sequences(events)
    a = seq.vocab.users.tolist().index("a")
    assert seq.vocab.items[seq.sequence(a)].tolist() == ["early", "tie1", "tie2", "late"]


def test_contiguous_ids_with_padding_and_vocabulary_maps_back():
    log = log_of([("u2", "i9", 1), ("u1", "i3", 2), ("u2", "i3", 3), ("u1", "i5", 4)])
    events, _ = clean(log)
    seq = build_sequences(events)
    assert seq.vocab.items[0] == PAD and seq.vocab.users[0] == PAD
    assert sorted(set(seq.items.tolist())) == [1, 2, 3]  # contiguous from 1, 0 unused
    assert seq.lengths.tolist() == [0, 2, 2]
    restored = {(seq.vocab.users[u], seq.vocab.items[i]) for u in (1, 2) for i in seq.sequence(u)}
    assert restored == {("u2", "i9"), ("u1", "i3"), ("u2", "i3"), ("u1", "i5")}


def test_keep_most_recent_truncates_each_user():
    log = log_of([("a", f"i{t}", t) for t in range(6)] + [("b", "j", 1)])
    events, _ = clean(log)
    kept = keep_most_recent(events, 3)
    assert kept[kept["user"] == "a"]["item"].tolist() == ["i3", "i4", "i5"]
    assert kept[kept["user"] == "b"]["item"].tolist() == ["j"]
