"""Metrics of binary predictions: who scores above whom (AUC, TPR at a low FPR), for the membership-inference
attack of the privacy audit (members vs non-members). Ties count ½ everywhere a ranking is compared. Click and
conversion figures are computed from mergeable sums (:mod:`fedseqrec.evaluation.ads`).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count ½): the Mann-Whitney statistic; NaN
    without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties count ½
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The share of positives above the threshold that lets at most ``fpr`` of the negatives through."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    negatives = np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf  # positives must score above it
    return float((scores[labels] > threshold).mean()) if labels.any() else float("nan")
