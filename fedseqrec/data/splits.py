"""Evaluation splits over per-user sequences.

A split says, per user, how long the training prefix is and at which positions the validation and test
targets sit; the input for a target at position ``p`` is everything before it (``sequence[:p]``).
Position -1 means the user has no such target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedseqrec.data.sequences import SequenceData
from fedseqrec.errors import UserError

SPLITS = ("leave-one-out", "temporal")


@dataclass
class Split:
    name: str
    train_end: np.ndarray  # int64 by user id: training events are sequence[:train_end]
    valid_pos: np.ndarray  # int64 by user id, -1 = no validation target
    test_pos: np.ndarray  # int64 by user id, -1 = no test target
    params: dict

    @property
    def n_valid(self) -> int:
        return int((self.valid_pos[1:] >= 0).sum())

    @property
    def n_test(self) -> int:
        return int((self.test_pos[1:] >= 0).sum())

    @property
    def n_train_interactions(self) -> int:
        return int(self.train_end[1:].sum())


def leave_one_out_split(data: SequenceData) -> Split:
    """Last event = test target, second-to-last = validation target, the rest = training (RecBole, SASRec).

    A user with two events gets a test target only, a user with one event trains only.
    """
    n = data.lengths.astype(np.int64)
    train_end = np.where(n >= 3, n - 2, np.minimum(n, 1))
    valid_pos = np.where(n >= 3, n - 2, -1)
    test_pos = np.where(n >= 2, n - 1, -1)
    return _with_padding_user(Split("leave-one-out", train_end, valid_pos, test_pos, {}))


def search_split(data: SequenceData) -> Split:
    """Leave-one-out over searches (``--task search``): a user's last event that carries a query is the test
    target, the one before it the validation target, each ranked from everything before it; training is the
    events before the validation target (before the test target when there is one search, all events when there
    is none). Searches that open a history (nothing before them) are no targets."""
    return _last_two(data, data.queries > 0, "search")


def impression_split(data: SequenceData, ad_events: np.ndarray) -> Split:
    """Leave-one-out over ad slates (``--task ctr``): a slate is a run of consecutive impression events (event ids in
    ``ad_events``); a user's last slate is the test slate, the one before it the validation slate, every impression
    of a slate predicted from everything before the slate. ``valid_pos`` / ``test_pos`` are the slates' first
    positions; training is as in :func:`search_split`."""
    shown = np.isin(data.events, ad_events)
    return _last_two(data, shown & ~np.r_[False, shown[:-1]], "slates")


def _last_two(data: SequenceData, marked: np.ndarray, name: str) -> Split:
    """Test: each user's last marked event after their first; validation: the marked one before it."""
    n = data.lengths.astype(np.int64)
    position = np.arange(data.n_interactions) - np.repeat(data.offsets[:-1], data.lengths)
    user = data.user_of_event
    marked = marked & (position >= 1)
    last = np.full(len(n), -1, dtype=np.int64)
    np.maximum.at(last, user[marked], position[marked])
    earlier = marked & (position < last[user])
    before_last = np.full(len(n), -1, dtype=np.int64)
    np.maximum.at(before_last, user[earlier], position[earlier])
    train_end = np.where(before_last >= 0, before_last, np.where(last >= 0, last, n))
    return _with_padding_user(Split(name, train_end, before_last, last, {}))


def slate_end(data: SequenceData, user: int, start: int, ad_events: np.ndarray) -> int:
    """The position after the slate that starts at ``start`` in ``user``'s sequence."""
    events = data.events[data.offsets[user] : data.offsets[user + 1]]
    end = start
    while end < len(events) and events[end] in ad_events:
        end += 1
    return end


def temporal_split(data: SequenceData, valid_quantile: float = 0.8, test_quantile: float = 0.9) -> Split:
    """A global cut in time: events before the ``valid_quantile`` timestamp train; a user's first event in
    [valid cut, test cut) is their validation target and their first event after the test cut their test
    target, each predicted from all of the user's earlier events (only users with earlier events get one).
    """
    if not 0.0 < valid_quantile <= test_quantile < 1.0:
        raise UserError(
            f"temporal split needs 0 < valid quantile <= test quantile < 1, got {valid_quantile} and {test_quantile}"
        )
    valid_cut, test_cut = np.quantile(data.timestamps, [valid_quantile, test_quantile])
    user = data.user_of_event
    n_users = len(data.offsets) - 1
    before_valid = np.bincount(user, weights=data.timestamps < valid_cut, minlength=n_users).astype(np.int64)
    before_test = np.bincount(user, weights=data.timestamps < test_cut, minlength=n_users).astype(np.int64)
    n = data.lengths.astype(np.int64)
    valid_pos = np.where((before_valid < before_test) & (before_valid > 0), before_valid, -1)
    test_pos = np.where((before_test < n) & (before_test > 0), before_test, -1)
    params = {
        "valid_quantile": valid_quantile,
        "test_quantile": test_quantile,
        "valid_cut": float(valid_cut),
        "test_cut": float(test_cut),
    }
    return _with_padding_user(Split("temporal", before_valid, valid_pos, test_pos, params))


def _with_padding_user(split: Split) -> Split:
    split.train_end[0], split.valid_pos[0], split.test_pos[0] = 0, -1, -1
    return split


def training_items(data: SequenceData, split: Split) -> np.ndarray:
    """Item ids of every training event (each user's ``sequence[:train_end]``), in sequence order."""
    position = np.arange(data.n_interactions) - np.repeat(data.offsets[:-1], data.lengths)
    return data.items[position < np.repeat(split.train_end, data.lengths)]


def training_item_counts(data: SequenceData, split: Split, users: np.ndarray | None = None) -> np.ndarray:
    """Each item id's number of training events (index: item id) of every user, or of ``users`` only; the padding
    id 0 counts nothing."""
    if users is None:
        items = training_items(data, split)
    else:
        ends = split.train_end[users]
        index = np.repeat(data.offsets[users] - np.cumsum(ends) + ends, ends) + np.arange(int(ends.sum()))
        items = data.items[index]
    counts = np.bincount(items, minlength=data.n_items + 1)
    counts[0] = 0
    return counts


def make_split(data: SequenceData, name: str, valid_quantile: float = 0.8, test_quantile: float = 0.9) -> Split:
    if name == "leave-one-out":
        return leave_one_out_split(data)
    if name == "temporal":
        return temporal_split(data, valid_quantile, test_quantile)
    raise UserError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
