"""A shilling attack on a sequential recommender: fake users whose histories push one target item.

Each fake user's sequence alternates items drawn by popularity with the target item (``p₁ T p₂ T …``), as long
as a typical real user's: a next-item model learns "after a popular item comes T" and recommends T to real users
(the classic data-poisoning attack on sequential recommenders). Fake users train like any user — in a federation
they are spread over the silos by the partition — but hold no validation or test target, so every metric stays
over real users. Their tokens start with ``fake-user-``; :func:`fake_user_ids` finds them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import EVENT, ITEM, TIMESTAMP, USER, append_users
from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError

FAKE_PREFIX = "fake-user-"


def target_item(events: pd.DataFrame, requested: str | None, seed: int) -> str:
    """The item to push: ``requested`` (an item token of the data), else one drawn by ``seed`` from the less
    popular half of the catalogue (pushing an item already in everyone's top 10 would show nothing)."""
    counts = events[ITEM].value_counts()
    if requested is not None:
        if requested not in counts.index:
            raise UserError(f"--target-item {requested!r} is not an item of the data")
        return requested
    tail = counts.index[len(counts) // 2 :]
    return str(tail[np.random.default_rng([seed, 0x5A11]).integers(len(tail))])


def add_fake_users(events: pd.DataFrame, share: float, target: str, seed: int) -> pd.DataFrame:
    """``events`` with ``round(share × users)`` fake users appended (after every real event in time)."""
    users = events[USER].nunique()
    count = round(share * users)
    if count == 0:
        raise UserError(f"--fake-users {share:g} of {users} users is no fake user")
    rng = np.random.default_rng([seed, 0xFA4E])
    counts = events[ITEM].value_counts()
    counts = counts[counts.index != target]
    popular, weights = counts.index.to_numpy(), counts.to_numpy(dtype=np.float64)
    length = max(4, int(events.groupby(USER).size().median()))
    start = float(events[TIMESTAMP].max()) + 1.0
    rows = []
    for f in range(count):
        picks = rng.choice(popular, size=(length + 1) // 2, p=weights / weights.sum())
        sequence = [item for pick in picks for item in (pick, target)][:length]
        for position, item in enumerate(sequence):
            rows.append((f"{FAKE_PREFIX}{f:05d}", item, start + position))
    fake = pd.DataFrame(rows, columns=[USER, ITEM, TIMESTAMP])
    return append_users(events, fake, events[EVENT].mode().iloc[0] if len(events) else "interaction")


def fake_user_ids(user_tokens: np.ndarray) -> np.ndarray:
    """Ids (positions in the user vocabulary) of the fake users."""
    tokens = pd.Series(user_tokens, dtype=object).astype(str)
    return np.flatnonzero(tokens.str.startswith(FAKE_PREFIX).to_numpy()).astype(np.int64)


def train_only(split: Split, users: np.ndarray, lengths: np.ndarray) -> Split:
    """``split`` with ``users`` training on their whole sequence and holding no validation or test target."""
    train_end, valid_pos, test_pos = split.train_end.copy(), split.valid_pos.copy(), split.test_pos.copy()
    train_end[users], valid_pos[users], test_pos[users] = lengths[users], -1, -1
    return replace(split, train_end=train_end, valid_pos=valid_pos, test_pos=test_pos)
