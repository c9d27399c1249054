"""Evaluating a recommender on the validation or test targets of a split.

``full`` ranks each target against every item (the default, and the only protocol comparable across
papers that report full ranking). ``sampled-uniform`` / ``sampled-pop`` rank it against 100 sampled negatives
(uniformly, or by training popularity) that the user has not interacted with, as in older papers; their
results are labelled with the protocol because they are not comparable with full ranking.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split, training_item_counts, training_items
from fedseqrec.errors import UserError
from fedseqrec.evaluation.ads import ad_sums
from fedseqrec.evaluation.metrics import KS, MetricSums
from fedseqrec.evaluation.protocols import PROTOCOLS
from fedseqrec.models.batching import evaluation_batches, slate_batches
from fedseqrec.models.device import device_of, scores_on_cpu
from fedseqrec.models.pop import Popularity


@torch.no_grad()
def evaluate_sums(
    model,
    data: SequenceData,
    split: Split,
    which: str = "valid",
    users: np.ndarray | None = None,
    max_len: int = 50,
    protocol: str = "full",
    negatives: int = 100,
    ks=KS,
    seed: int = 0,
    batch_size: int = 256,
) -> MetricSums:
    """Metric sums over the targets of ``users`` (all users by default), to be merged or turned into means."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if any(k < 1 for k in ks):
        raise UserError(f"metric cut-offs K must be positive, got {list(ks)}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    if split.name == "slates":  # --task ctr: every impression of the slate, scored as click and purchase
        sums = _ad_sums(model, data, split, which, users, max_len, batch_size)
        if was_training:
            model.train()
        return sums
    sums = MetricSums()
    rng = np.random.default_rng(seed)
    weights = _popularity(data, split) if protocol == "sampled-pop" else None
    for chunk in evaluation_batches(data, split, which, users, max_len, batch_size):
        scores = scores_on_cpu(model, chunk.batch)
        if protocol == "full-history-removed":
            scores = _remove_history(scores, chunk, data, split, which)
        elif protocol != "full":
            scores = _restrict_to_sample(scores, chunk, data, split, which, negatives, rng, weights)
        sums.add_scores(scores, chunk.targets, ks)
    if was_training:
        model.train()
    return sums


def _ad_sums(model, data: SequenceData, split: Split, which: str, users, max_len: int, batch_size: int) -> MetricSums:
    total = MetricSums()
    for chunk in slate_batches(data, split, which, users=users, max_len=max_len, batch_size=batch_size):
        device = device_of(model)
        predicted = model.predict_ads(chunk.batch.to(device), chunk.ads.to(device))
        p_click, p_purchase = (p.float().cpu().numpy() for p in predicted)
        at = chunk.ads.numpy() > 0
        slates = np.repeat(chunk.users[:, None], at.shape[1], axis=1)
        sums = ad_sums(p_click[at], p_purchase[at], chunk.clicked[at], chunk.bought[at], slates[at])
        total = total.merge(MetricSums(sums, int(at.sum())))
    return total


def evaluate(model, data: SequenceData, split: Split, which: str = "valid", **options) -> dict[str, float]:
    return evaluate_sums(model, data, split, which, **options).result()


def _popularity(data: SequenceData, split: Split) -> np.ndarray:
    return training_item_counts(data, split).astype(np.float64)


def _remove_history(scores: torch.Tensor, chunk, data: SequenceData, split: Split, which: str) -> torch.Tensor:
    """The user's earlier items (the whole history before the target, not only the model's window) out of the
    ranking; the target stays, even when the user had it before."""
    positions = split.valid_pos if which == "valid" else split.test_pos
    rows, items = [], []
    for row, user in enumerate(chunk.users):
        start = data.offsets[user]
        history = np.unique(data.items[start : start + positions[user]])
        rows.append(np.full(len(history), row))
        items.append(history)
    rows, items = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(items).astype(np.int64))
    row_index = torch.arange(len(chunk.targets))
    target_scores = scores[row_index, chunk.targets].clone()
    scores = scores.index_put((rows, items), torch.tensor(-math.inf))
    scores[row_index, chunk.targets] = target_scores
    return scores


def _restrict_to_sample(scores, chunk, data, split, which, negatives, rng, weights) -> torch.Tensor:
    """Keep the target and ``negatives`` sampled items the user has not interacted with; the rest -inf."""
    positions = split.valid_pos if which == "valid" else split.test_pos
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for row, (user, target) in enumerate(zip(chunk.users, chunk.targets.tolist(), strict=True)):
        candidate = np.ones(data.n_items + 1, dtype=bool)
        candidate[0] = False
        candidate[data.sequence(user)[: positions[user] + 1]] = False  # history and the target itself
        allowed = np.flatnonzero(candidate)
        p = None
        if weights is not None and weights[allowed].sum() > 0:
            p = weights[allowed] / weights[allowed].sum()
            negatives = min(negatives, int((p > 0).sum()))
        sample = rng.choice(allowed, size=min(negatives, len(allowed)), replace=False, p=p)
        keep[row, torch.from_numpy(sample)] = True
        keep[row, target] = True
    return scores.masked_fill(~keep, -math.inf)


def popularity_baseline(data: SequenceData, split: Split, max_len: int, protocol: str = "full") -> dict:
    """Validation and test metrics of the most-popular baseline (training counts): the floor a model must beat."""
    model = Popularity(data.n_items).fit(training_items(data, split))
    return {
        which: evaluate(model, data, split, which, max_len=max_len, protocol=protocol) for which in ("valid", "test")
    }


@torch.no_grad()
def item_exposure(
    model, data: SequenceData, split: Split, item: int, which: str = "test", max_len: int = 50, k: int = 10
) -> dict:
    """How often ``item`` is recommended: the share of users with a ``which`` target, who never had ``item``
    before it, whose top ``k`` (their earlier items removed) holds it — a poisoning attack's target-item HR@k."""
    positions = split.valid_pos if which == "valid" else split.test_pos
    was_training = getattr(model, "training", False)
    model.eval()
    hits = users = 0
    for chunk in evaluation_batches(data, split, which, None, max_len, 256):
        scores = scores_on_cpu(model, chunk.batch)
        for row, user in enumerate(chunk.users):
            start = data.offsets[user]
            history = data.items[start : start + positions[user]]
            if item in history:
                continue
            ranked = scores[row].clone()
            ranked[torch.from_numpy(np.unique(history).astype(np.int64))] = -math.inf
            users += 1
            hits += int((ranked > ranked[item]).sum()) < k
    if was_training:
        model.train()
    return {f"target_HR@{k}": hits / users if users else 0.0, "users": users}


def poisoning_figures(model, data: SequenceData, split: Split, options: dict, max_len: int) -> dict:
    """For data with fake users (``--fake-users``): the target item, their number, and how often the model
    recommends the target to real users (test targets); empty for clean data."""
    attack = options.get("poisoning")
    if not attack:
        return {}
    item = int(np.flatnonzero(data.vocab.items == attack["target_item"])[0])
    return {"poisoning": {**attack, **item_exposure(model, data, split, item, "test", max_len)}}
