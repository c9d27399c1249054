"""Tensors from sequences: training windows (one per user) and evaluation inputs (one per target)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fedseqrec.data.sequences import SequenceData, ad_event_ids, ad_labels
from fedseqrec.data.splits import Split, slate_end
from fedseqrec.models.base import SeqBatch, gap_buckets


def event_gap_buckets(data: SequenceData) -> np.ndarray:
    """Time-gap bucket of every event relative to the user's previous event (1 = first event)."""
    gaps = np.diff(data.timestamps, prepend=np.nan)
    gaps[data.offsets[1:-1][data.lengths[1:] > 0]] = -1.0  # first event of each user
    gaps[np.isnan(gaps)] = -1.0
    return gap_buckets(torch.from_numpy(gaps)).numpy()


class TrainingWindows(Dataset):
    """One example per user: the most recent ``max_len + 1`` training events (or a random window of them).

    Only users with at least two training events have a target. Items come right-padded with id 0.
    """

    def __init__(
        self,
        data: SequenceData,
        split: Split,
        users: np.ndarray | None = None,
        max_len: int = 50,
        random_window: bool = False,
        seed: int = 0,
    ):
        users = np.arange(1, data.n_users + 1) if users is None else np.asarray(users)
        self.users = users[split.train_end[users] >= 2]
        self.data, self.split, self.width = data, split, max_len + 1
        self.random_window = random_window
        self.rng = np.random.default_rng(seed)
        self.gaps = event_gap_buckets(data)
        self.queries = _query_tokens(data)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        user = self.users[index]
        start, n = self.data.offsets[user], int(self.split.train_end[user])
        end = n
        if self.random_window and n > self.width:
            # Ends drawn up to `width` past the history are clipped to it: the most recent window takes that
            # extra mass, so the latest events are targets 1-2x as often as the middle of the history. Plain
            # uniform ends would make them targets up to `width` times less often than the middle, and the
            # latest behaviour is what the next item is predicted from.
            end = min(n, int(self.rng.integers(self.width, n + self.width)))
        begin = max(0, end - self.width)
        lo, hi = start + begin, start + end
        window = (*_padded(self.data, self.gaps, lo, hi, self.width), torch.tensor(end - begin))
        return window if self.queries is None else (*window, _padded_queries(self.queries, lo, hi, self.width))

    def batch_of(self, tensors: tuple[torch.Tensor, ...]) -> SeqBatch:
        items, events, gaps, lengths, *queries = tensors
        return SeqBatch(items=items, events=events, gaps=gaps, lengths=lengths, queries=(queries or [None])[0])

    def window_lengths(self) -> np.ndarray:
        """Events in each user's training window (the same for random and recent windows)."""
        return np.minimum(self.split.train_end[self.users], self.width)


class LengthBatches(Sampler[list[int]]):
    """Batches of users with similar window lengths, every user once per epoch: users are shuffled, taken in
    pools of ``POOL`` batches, sorted by length within a pool and cut into batches, and the batches shuffled.
    With short histories (Amazon Beauty: 8.9 events, windows of 51) a random batch is mostly padding up to its
    longest user; these are cut to their longest user with little left over."""

    POOL = 50

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.lengths))
        pool = self.batch_size * self.POOL
        batches = []
        for begin in range(0, len(order), pool):
            chunk = order[begin : begin + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for index in self.rng.permutation(len(batches)):
            yield batches[index]


class TrainingPrefixes(TrainingWindows):
    """One example per training target: for each user's training events 2..n, the ``max_len`` events before it and
    the event itself, whose item is the only target of the example (BSARec's and ICLRec's training data: every
    prefix a sequence of its own). A model may then read a whole prefix at every position (BSARec's Fourier
    filter), since no position of it is a target but the last. An epoch has as many examples as targets."""

    def __init__(self, data: SequenceData, split: Split, users: np.ndarray | None = None, max_len: int = 50):
        super().__init__(data, split, users, max_len)
        counts = split.train_end[self.users].astype(np.int64) - 1  # targets 2..n of each user
        self.example_users = np.repeat(self.users, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        self.example_ends = np.arange(len(self.example_users)) - first + 2  # events [.., end) end at the target

    def __len__(self) -> int:
        return len(self.example_users)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        user, end = self.example_users[index], int(self.example_ends[index])
        start, begin = self.data.offsets[user], max(0, end - self.width)
        lo, hi = start + begin, start + end
        window = (*_padded(self.data, self.gaps, lo, hi, self.width), torch.tensor(end - begin))
        return window if self.queries is None else (*window, _padded_queries(self.queries, lo, hi, self.width))

    def batch_of(self, tensors: tuple[torch.Tensor, ...]) -> SeqBatch:
        """The training view itself: inputs without the last event, whose item is the one target."""
        items, events, gaps, lengths, *queries = tensors
        rows = torch.arange(len(lengths))
        targets = torch.zeros_like(items[:, 1:])
        targets[rows, lengths - 2] = items[rows, lengths - 1]
        inputs = (x[:, :-1].contiguous() for x in (items, events, gaps))
        asked = queries[0][:, 1:].contiguous() if queries else None
        return SeqBatch(*inputs, lengths - 1, targets=targets, target_queries=asked)

    def window_lengths(self) -> np.ndarray:
        return np.minimum(self.example_ends, self.width)


def training_examples(
    data: SequenceData, split: Split, users: np.ndarray | None, max_len: int, window: str, seed: int = 0
) -> TrainingWindows:
    """The examples ``--window`` names: a window per user (``random`` or ``recent``), or every prefix."""
    if window == "prefixes":
        return TrainingPrefixes(data, split, users, max_len)
    return TrainingWindows(data, split, users, max_len, random_window=window == "random", seed=seed)


def training_loader(windows: TrainingWindows, batch_size: int, seed: int, by_length: bool = False) -> DataLoader:
    """Shuffled batches of users for plain training (``by_length``: see :class:`LengthBatches`)."""
    if by_length:
        return DataLoader(windows, batch_sampler=LengthBatches(windows.window_lengths(), batch_size, seed))
    return DataLoader(windows, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _padded(data: SequenceData, gaps: np.ndarray, lo: int, hi: int, width: int) -> tuple[torch.Tensor, ...]:
    out = []
    for array in (data.items, data.events, gaps):
        row = np.zeros(width, dtype=np.int64)
        row[: hi - lo] = array[lo:hi]
        out.append(torch.from_numpy(row))
    return tuple(out)


def _query_tokens(data: SequenceData) -> np.ndarray | None:
    """Each event's query as token ids (None when no event has a query: nothing to carry)."""
    return data.tokens.queries[data.queries] if data.has_queries else None


def _padded_queries(tokens: np.ndarray, lo: int, hi: int, width: int) -> torch.Tensor:
    out = np.zeros((width, tokens.shape[1]), dtype=np.int64)
    out[: hi - lo] = tokens[lo:hi]
    return torch.from_numpy(out)


@dataclass
class EvalBatch:
    batch: SeqBatch
    targets: torch.Tensor  # (B,) item ids
    users: np.ndarray  # (B,) user ids


def evaluation_batches(
    data: SequenceData,
    split: Split,
    which: str,
    users: np.ndarray | None = None,
    max_len: int = 50,
    batch_size: int = 256,
) -> Iterator[EvalBatch]:
    """For each user with a ``which`` ("valid" or "test") target: the ``max_len`` events before it.

    Users come in order of how many events they have before the target, and each batch is only as wide as its
    longest history: the models see padding only after a sequence, so the scores are those of the full window, and
    short histories (Amazon Beauty: 8.9 events a user, windows of 50) cost what they hold, not the window."""
    positions = {"valid": split.valid_pos, "test": split.test_pos}[which]
    users = np.arange(1, data.n_users + 1) if users is None else np.asarray(users)
    users = users[positions[users] >= 1]
    users = users[np.argsort(np.minimum(positions[users], max_len), kind="stable")]
    gaps = event_gap_buckets(data)
    queries = _query_tokens(data)
    for chunk in np.array_split(users, max(1, int(np.ceil(len(users) / batch_size)))):
        if len(chunk) == 0:
            continue
        rows, lengths, targets, asked = [], [], [], []
        width = int(np.minimum(positions[chunk], max_len).max())
        for user in chunk:
            start, p = data.offsets[user], int(positions[user])
            begin = max(0, p - max_len)
            rows.append(_padded(data, gaps, start + begin, start + p, width))
            lengths.append(p - begin)
            targets.append(int(data.items[start + p]))
            asked.append(start + p)
        items, events, gap_rows = (torch.stack(col) for col in zip(*rows, strict=True))
        batch = SeqBatch(items, events, gap_rows, torch.tensor(lengths))
        if queries is not None:  # the target's own query, known when it is predicted
            asking(batch, queries[asked])
        yield EvalBatch(batch, torch.tensor(targets), chunk)


@dataclass
class SlateBatch:
    """Ad slates to score (``--task ctr``): each user's history before the slate, and the slate's ads."""

    batch: SeqBatch
    ads: torch.Tensor  # (B, K) item ids, 0 = no ad (slates of fewer than K)
    clicked: np.ndarray  # (B, K) bool
    bought: np.ndarray  # (B, K) bool
    users: np.ndarray  # (B,)


def slate_batches(
    data: SequenceData, split: Split, which: str, **window: int | np.ndarray | None
) -> Iterator[SlateBatch]:
    """For each user with a ``which`` slate (``split.valid_pos`` / ``test_pos``: its first impression): the
    ``max_len`` events before it and the slate's impressions with their labels. ``window``: ``users``,
    ``max_len``, ``batch_size``, as :func:`evaluation_batches` takes them (it makes the histories)."""
    clicked_event, bought_event = ad_labels(data)
    ad_events = ad_event_ids(data)
    positions = split.valid_pos if which == "valid" else split.test_pos
    for chunk in evaluation_batches(data, split, which, **window):
        ads = []
        for user in chunk.users:
            start, p = data.offsets[user], int(positions[user])
            ads.append(np.arange(start + p, start + slate_end(data, user, p, ad_events)))
        width = max(len(a) for a in ads)
        index = np.zeros((len(ads), width), dtype=np.int64)
        present = np.zeros((len(ads), width), dtype=bool)
        for row, slate in enumerate(ads):
            index[row, : len(slate)], present[row, : len(slate)] = slate, True
        events = data.events[index]
        yield SlateBatch(
            chunk.batch,
            torch.from_numpy(np.where(present, data.items[index], 0).astype(np.int64)),
            present & clicked_event[events],
            present & bought_event[events],
            chunk.users,
        )


def asking(batch: SeqBatch, words: np.ndarray) -> SeqBatch:
    """``batch`` with each row's query (``words``: token ids, one row per sequence) as what is asked after its
    last position: the query of the item to be predicted."""
    b, t = batch.items.shape
    batch.target_queries = torch.zeros(b, t, words.shape[1], dtype=torch.long)
    batch.target_queries[torch.arange(b), batch.lengths - 1] = torch.from_numpy(np.asarray(words, dtype=np.int64))
    return batch


def history_batch(histories: list[np.ndarray], event: int, seconds: list[np.ndarray | None] | None = None) -> SeqBatch:
    """Histories given as item ids (oldest first), right-padded into one batch: every position of event type
    ``event``; gaps from ``seconds`` (each history's timestamps) where given, else unknown."""
    sizes = np.fromiter((len(sequence) for sequence in histories), dtype=np.int64, count=len(histories))
    items = np.zeros((len(histories), int(sizes.max())), dtype=np.int64)
    for row, sequence in enumerate(histories):
        items[row, : len(sequence)] = sequence
    filled = np.arange(items.shape[1])[None, :] < sizes[:, None]
    unknown = int(gap_buckets(torch.tensor([-1.0], dtype=torch.float64))[0])
    gaps = torch.from_numpy(np.where(filled, unknown, 0))  # every gap unknown, found per history below if known
    for row, times in enumerate(seconds or []):
        if times is not None and len(times) > 1:
            delta = torch.from_numpy(np.diff(np.asarray(times, dtype=np.float64)))
            gaps[row, 1 : len(times)] = gap_buckets(delta)
    items = torch.from_numpy(items)
    lengths = torch.from_numpy(np.maximum(sizes, 1))
    return SeqBatch(items=items, events=torch.where(items > 0, event, 0), gaps=gaps, lengths=lengths)
