"""Training windows and evaluation inputs built from sequences."""

import numpy as np
import torch
from test_cleaning import log_of

from fedseqrec.data.cleaning import clean
from fedseqrec.data.sequences import build_sequences
from fedseqrec.data.splits import leave_one_out_split
from fedseqrec.models.batching import LengthBatches, TrainingWindows, evaluation_batches, training_loader


def long_user(n=200):
    events, _ = clean(log_of([("a", f"i{t:03d}", t) for t in range(n)] + [("b", "x", 1), ("b", "y", 2), ("b", "z", 3)]))
    seq = build_sequences(events)
    return seq, leave_one_out_split(seq)


def test_recent_window_is_the_end_of_the_training_prefix():
    seq, split = long_user()
    items, events, gaps, length = TrainingWindows(seq, split, max_len=10)[0]
    assert length == 11 and items.shape == (11,)
    assert items.tolist() == seq.sequence(1)[split.train_end[1] - 11 : split.train_end[1]].tolist()
    assert (events > 0).all() and (gaps > 0).all()
    assert len(TrainingWindows(seq, split, max_len=10)) == 1  # user b trains on one event: no target, no example


def test_random_windows_cover_recent_positions_at_least_as_often_as_the_middle():
    seq, split = long_user()
    windows = TrainingWindows(seq, split, max_len=10, random_window=True, seed=0)
    n = int(split.train_end[1])
    covered = np.zeros(n)
    items_of_user = seq.sequence(1).tolist()
    for _ in range(4000):
        items, _, _, length = windows[0]
        start = items_of_user.index(int(items[0]))
        covered[start + 1 : start + int(length)] += 1  # positions that are targets in this window
    middle = covered[n // 2 - 20 : n // 2 + 20].mean()
    # positions n-1 .. n-10 are targets in 11 .. 20 of the n equally likely ends, the middle in 10
    expected = np.arange(20, 10, -1) / 10
    assert np.allclose(covered[-10:] / middle, expected, rtol=0.2)
    blocks = covered[20:-18].reshape(-1, 10).mean(axis=1) / middle  # uniform in between (up to sampling noise)
    assert blocks.min() > 0.85 and blocks.max() < 1.15


def test_evaluation_inputs_end_right_before_the_target():
    seq, split = long_user()
    batch = next(evaluation_batches(seq, split, "test", max_len=10))
    a = seq.sequence(1)
    assert batch.targets.tolist()[0] == a[-1]
    assert batch.batch.items[0].tolist() == a[-11:-1].tolist() and batch.batch.lengths[0] == 10
    b = seq.sequence(2)
    assert batch.targets.tolist()[1] == b[-1]
    assert batch.batch.items[1, :2].tolist() == b[:2].tolist() and (batch.batch.items[1, 2:] == 0).all()
    assert torch.equal(batch.batch.lengths, torch.tensor([10, 2]))


def test_length_batches_hold_every_user_once_with_similar_lengths():
    lengths = np.random.default_rng(0).integers(2, 52, size=1003)
    sampler = LengthBatches(lengths, batch_size=16, seed=1)
    epochs = [list(sampler) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 63
        assert sorted(i for batch in batches for i in batch) == list(range(1003))
        spread = np.mean([np.ptp(lengths[batch]) for batch in batches])
        assert spread < 5  # random batches of 16 from 2..51 spread over ~40
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_length_loader_serves_the_training_windows():
    seq, split = long_user()
    windows = TrainingWindows(seq, split, max_len=10)
    assert windows.window_lengths().tolist() == [11]
    (items, _, _, length) = next(iter(training_loader(windows, 4, seed=0, by_length=True)))
    assert items.shape == (1, 11) and length.tolist() == [11]
