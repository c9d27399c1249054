"""Reference implementations of binary metrics, written plainly from their definitions: the tests check the
package's mergeable click / conversion sums (fedseqrec.evaluation.ads) against them, on whole arrays."""

from __future__ import annotations

import numpy as np

from fedseqrec.evaluation.binary import auc


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group (user) AUC as in DIN (Zhou et al., 2018): each group's AUC weighted by its number of examples, over
    the groups that hold both classes (a group with one class ranks nothing)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()  # any group ids: strings, ints
    total = weight = 0.0
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for members in np.split(order, bounds):
        value = auc(scores[members], labels[members])
        if not np.isnan(value):
            total += value * len(members)
            weight += len(members)
    return total / weight if weight else float("nan")


def log_loss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities kept within [eps, 1 − eps]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Predicted against observed rate: overall, and per decile of the predictions (equal-count bins, in order)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    deciles = [
        {"predicted": float(p[part].mean()), "observed": float(y[part].mean()), "count": int(len(part))}
        for part in np.array_split(order, bins)
        if len(part)
    ]
    observed = float(y.mean()) if len(y) else float("nan")
    return {
        "predicted": float(p.mean()) if len(p) else float("nan"),
        "observed": observed,
        "ratio": float(p.mean() / observed) if len(p) and observed > 0 else float("nan"),
        "deciles": deciles,
    }
