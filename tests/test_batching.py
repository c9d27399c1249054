"""Training windows and evaluation inputs built from sequences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cleaning import log_of

from fedseqrec.data.cleaning import clean
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.sequences import build_sequences
from fedseqrec.data.shop import ShopConfig
from fedseqrec.data.splits import leave_one_out_split
from fedseqrec.models.base import SeqBatch, gap_buckets
from fedseqrec.models.batching import (
    LengthBatches,
    TrainingPrefixes,
    TrainingWindows,
    evaluation_batches,
    history_batch,
    training_loader,
)
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.registry import build_model, model_config_for


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


def test_prefixes_make_every_training_event_after_the_first_the_one_target_of_an_example():
    seq, split = long_user(30)
    prefixes = TrainingPrefixes(seq, split, max_len=10)
    n, history = int(split.train_end[1]), seq.sequence(1).tolist()
    assert len(prefixes) == n - 1  # user b trains on one event: no target, no example
    for index in range(n - 1):
        items, _, _, length = prefixes[index]
        end = index + 2  # the example of the event at end - 1
        assert items[:length].tolist() == history[max(0, end - 11) : end] and not items[length:].any()
    targets = []
    for tensors in training_loader(prefixes, 4, seed=0, by_length=True):
        batch = prefixes.batch_of(tensors)
        rows = torch.arange(len(batch.lengths))
        assert ((batch.targets != 0).sum(1) == 1).all()  # one target an example: after its last input
        assert torch.equal(batch.targets[rows, batch.lengths - 1], tensors[0][rows, tensors[3] - 1])
        assert torch.equal(batch.items, tensors[0][:, :-1]) and torch.equal(batch.lengths, tensors[3] - 1)
        targets += batch.targets[rows, batch.lengths - 1].tolist()
    assert sorted(targets) == sorted(history[1:n])  # every training event after the first, once an epoch
    config = model_config_for(seq, ModelConfig(name="sasrec", hidden=8, heads=2, max_len=10))
    model = build_model("sasrec", config).eval()
    assert model.training_view(batch) is batch  # already a view: not shifted again
    assert torch.allclose(model.packed_loss(batch), model.calculate_loss(batch), atol=1e-6)


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
    assert batch.users.tolist() == [2, 1]  # shortest history first
    a = seq.sequence(1)
    assert batch.targets.tolist()[1] == a[-1]
    assert batch.batch.items[1].tolist() == a[-11:-1].tolist() and batch.batch.lengths[1] == 10
    b = seq.sequence(2)
    assert batch.targets.tolist()[0] == b[-1]
    assert batch.batch.items[0, :2].tolist() == b[:2].tolist() and (batch.batch.items[0, 2:] == 0).all()
    assert torch.equal(batch.batch.lengths, torch.tensor([2, 10]))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_evaluation_batches_as_wide_as_their_longest_history_score_as_the_full_window(name):
    shop = load_dataset(DataConfig(data="shop", shop=ShopConfig(users=60, items=40, days=10)))
    model = build_model(name, model_config_for(shop.sequences, ModelConfig(name=name, hidden=16, max_len=30))).eval()
    chunks = list(evaluation_batches(shop.sequences, shop.split, "test", max_len=30, batch_size=8))
    assert any(c.batch.items.shape[1] < 30 for c in chunks)
    for chunk in chunks:
        cut = chunk.batch
        lengths = cut.lengths.tolist()
        assert cut.items.shape[1] == max(lengths) and lengths == sorted(lengths)
        padded = SeqBatch(*(F.pad(x, (0, 30 - x.shape[1])) for x in (cut.items, cut.events, cut.gaps)), cut.lengths)
        with torch.no_grad():
            assert torch.allclose(model.full_sort_predict(cut), model.full_sort_predict(padded), atol=1e-5)


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


def test_a_history_batch_is_right_padded_with_each_gap_from_its_own_timestamps():
    histories = [np.array([5, 6, 7]), np.array([9]), np.array([2, 3])]
    seconds = [np.array([0.0, 10.0, 4000.0]), None, np.array([100.0, 100.0])]
    batch = history_batch(histories, event=2, seconds=seconds)
    assert batch.items.tolist() == [[5, 6, 7], [9, 0, 0], [2, 3, 0]] and batch.lengths.tolist() == [3, 1, 2]
    assert batch.events.tolist() == [[2, 2, 2], [2, 0, 0], [2, 2, 0]]
    unknown = int(gap_buckets(torch.tensor([-1.0]))[0])
    known = gap_buckets(torch.tensor([10.0, 3990.0, 0.0], dtype=torch.float64)).tolist()
    assert batch.gaps.tolist() == [[unknown, *known[:2]], [unknown, 0, 0], [unknown, known[2], 0]]
    plain = history_batch(histories, event=2)
    assert plain.gaps.tolist() == [[unknown] * 3, [unknown, 0, 0], [unknown] * 2 + [0]]
