"""Ranking metrics for next-item prediction with one held-out target per user.

A target's rank is taken against every candidate item. Ties never favour the target: among the items that
score the same as the target, its position is uniformly random, and every metric is the *expected* value
over that position (so a constant-score model gets HR@K = K / n_items, not 1). The accumulator keeps sums and
a count, so results from several clients combine exactly, not as an average of averages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedseqrec.evaluation.ads import PREFIX as ADS
from fedseqrec.evaluation.ads import ad_result

KS = (5, 10, 20)
METRICS = ("HR", "NDCG", "MRR", "Recall", "Precision", "F1")


def tie_aware_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items scoring above the target, other items scoring the same) per row; -inf columns never count."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    greater = (scores > target_scores).sum(dim=1)
    equal = (scores == target_scores).sum(dim=1) - 1
    return greater, equal


def _expected(greater: torch.Tensor, equal: torch.Tensor, k: int, gain) -> torch.Tensor:
    """Mean of gain(rank) over the ranks greater+1 .. greater+equal+1 that fall within the top k."""
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(gain(ranks), 0)])
    lo = (greater + 1).clamp(max=k + 1)
    hi = (greater + equal + 1).clamp(max=k)
    total = torch.where(hi >= lo, cumulative[hi] - cumulative[lo - 1], torch.zeros_like(hi, dtype=torch.float64))
    return total / (equal + 1).double()


def per_target_metrics(greater: torch.Tensor, equal: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """Expected metric values per target. With one relevant item, Recall@K = HR@K and Precision@K = HR@K / K."""
    out = {}
    for k in ks:
        hit = _expected(greater, equal, k, torch.ones_like)
        precision = hit / k
        out[f"HR@{k}"] = hit
        out[f"NDCG@{k}"] = _expected(greater, equal, k, lambda r: 1.0 / torch.log2(r + 1.0))
        out[f"MRR@{k}"] = _expected(greater, equal, k, lambda r: 1.0 / r)
        out[f"Recall@{k}"] = hit
        out[f"Precision@{k}"] = precision
        out[f"F1@{k}"] = torch.where(hit > 0, 2 * precision * hit / (precision + hit), torch.zeros_like(hit))
    return out


@dataclass
class MetricSums:
    """Sums of per-target metric values and the number of targets: add them up, divide once."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add_scores(self, scores: torch.Tensor, targets: torch.Tensor, ks=KS) -> None:
        greater, equal = tie_aware_counts(scores, targets)
        for name, values in per_target_metrics(greater, equal, ks).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.count += len(targets)

    def merge(self, other: MetricSums) -> MetricSums:
        names = set(self.sums) | set(other.sums)
        return MetricSums({n: self.sums.get(n, 0.0) + other.sums.get(n, 0.0) for n in names}, self.count + other.count)

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        if any(name.startswith(ADS) for name in self.sums):  # click and conversion sums (--task ctr)
            return ad_result(self.sums, self.count)
        ordered = sorted(self.sums, key=lambda n: (int(n.split("@")[1]), METRICS.index(n.split("@")[0])))
        return {name: self.sums[name] / self.count for name in ordered}


def catalogue_note(n_items: int, ks=KS) -> str | None:
    """What a ranking figure cannot tell when the catalogue is no larger than its cut-off: every item is then in
    the top K, and HR@K is 1 whatever the model."""
    blind = [k for k in ks if k >= n_items]
    if not blind:
        return None
    cut = ", ".join(f"@{k}" for k in blind)
    return (
        f"the catalogue holds {n_items} item{'s' if n_items != 1 else ''}: at {cut} every item is in the top K, so "
        "those figures measure nothing"
    )
