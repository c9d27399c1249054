"""Click and conversion predictions scored as sums that clients can add up (``--task ctr``).

Every figure comes from sums over impressions, so that federated evaluation merges clients exactly as it merges
ranking sums (:class:`~fedseqrec.evaluation.metrics.MetricSums`): AUC from histograms of the predicted
probabilities in BINS equal bins per label (pairs within one bin count as ties, half — exact up to 1/BINS in
probability), GAUC as the impression-weighted sum of each slate's own AUC (slates with both outcomes), log-loss,
and calibration: impressions sorted by prediction and cut into ten groups of equal size at bin edges, the mean
prediction against the observed rate in each. Two predictions are scored: pCTR against clicks, and pCTCVR
(= pCTR · pCVR, a purchase per impression) against purchases — "CVR over all impressions".
"""

from __future__ import annotations

import numpy as np

from fedseqrec.evaluation.binary import auc

BINS = 10_000
PREFIX = "ads:"  # the names of these sums start with it (ranking sums never do)
HEADS = (("CTR", "click"), ("CVR", "purchase"))  # (metric prefix, label)


def ad_sums(
    p_click: np.ndarray, p_purchase: np.ndarray, clicked: np.ndarray, bought: np.ndarray, slates: np.ndarray
) -> dict[str, float]:
    """Sums over impressions (1-d arrays, one entry each; ``slates``: which slate each belongs to)."""
    sums: dict[str, float] = {}
    for (name, _), p, y in ((HEADS[0], p_click, clicked), (HEADS[1], p_purchase, bought)):
        p, y = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7), y.astype(bool)
        bins = np.minimum((p * BINS).astype(np.int64), BINS - 1)
        for label, mask in (("pos", y), ("neg", ~y)):
            for b, count in zip(*np.unique(bins[mask], return_counts=True), strict=True):
                sums[f"{PREFIX}{name}:{label}:{b}"] = float(count)
        for b, total in zip(*_bin_sums(bins, p), strict=True):
            sums[f"{PREFIX}{name}:p:{b}"] = total
        sums[f"{PREFIX}{name}:logloss"] = float(-(y * np.log(p) + (~y) * np.log(1 - p)).sum())
        sums[f"{PREFIX}{name}:positives"] = float(y.sum())
        weighted, weight = _slate_aucs(p, y, slates)
        sums[f"{PREFIX}{name}:gauc"], sums[f"{PREFIX}{name}:gauc_weight"] = weighted, weight
    return sums


def _bin_sums(bins: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, list[float]]:
    used, index = np.unique(bins, return_inverse=True)
    return used, np.bincount(index, weights=p).tolist()


def _slate_aucs(p: np.ndarray, y: np.ndarray, slates: np.ndarray) -> tuple[float, float]:
    weighted = weight = 0.0
    for slate in np.unique(slates):
        at = slates == slate
        if 0 < y[at].sum() < at.sum():
            weighted += at.sum() * auc(p[at], y[at])
            weight += at.sum()
    return weighted, weight


def ad_result(sums: dict[str, float], impressions: int) -> dict[str, float]:
    """The figures of :func:`ad_sums`' merged sums."""
    out: dict[str, float] = {}
    for name, _ in HEADS:
        pos, neg, predicted = (histogram(sums, f"{PREFIX}{name}:{kind}:") for kind in ("pos", "neg", "p"))
        out[f"{name}-AUC"] = _histogram_auc(pos, neg)
        weight = sums.get(f"{PREFIX}{name}:gauc_weight", 0.0)
        out[f"{name}-GAUC"] = sums.get(f"{PREFIX}{name}:gauc", 0.0) / weight if weight else float("nan")
        out[f"{name}-LogLoss"] = sums.get(f"{PREFIX}{name}:logloss", 0.0) / impressions
        out[f"{name}-observed"] = sums.get(f"{PREFIX}{name}:positives", 0.0) / impressions
        out[f"{name}-predicted"] = predicted.sum() / impressions
        groups = calibration_groups(pos, neg, predicted)
        errors = [abs(g["predicted"] - g["observed"]) / g["observed"] for g in groups if g["observed"] > 0]
        out[f"{name}-calibration"] = max(errors) if errors else float("nan")
    out["AUC"] = out["CTR-AUC"]  # what selects the best epoch or round
    return out


def histogram(sums: dict[str, float], prefix: str) -> np.ndarray:
    counts = np.zeros(BINS)
    for key, value in sums.items():
        if key.startswith(prefix):
            counts[int(key[len(prefix) :])] = value
    return counts


def _histogram_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties (the same bin) counting half."""
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def calibration_groups(pos: np.ndarray, neg: np.ndarray, predicted: np.ndarray, groups: int = 10) -> list[dict]:
    """Impressions in prediction order cut into ``groups`` of about equal size (at bin edges): each group's mean
    prediction and observed rate."""
    counts = pos + neg
    edges = np.searchsorted(np.cumsum(counts), np.linspace(0, counts.sum(), groups + 1)[1:-1])
    out = []
    for lo, hi in zip(np.r_[0, edges + 1], np.r_[edges + 1, BINS], strict=True):
        n = counts[lo:hi].sum()
        if n:
            out.append(
                {
                    "impressions": int(n),
                    "predicted": float(predicted[lo:hi].sum() / n),
                    "observed": float(pos[lo:hi].sum() / n),
                }
            )
    return out
