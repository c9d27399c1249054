"""Checks of figures that come from outside — a client's reply, a file — before anything reads them."""

from __future__ import annotations

import math


def number_problem(
    metrics, key: str, low: float | None = None, high: float | None = None, whole: bool = False, needed: bool = True
) -> str | None:
    """Why ``metrics[key]`` is not a finite number in [low, high] (whole: an integer), or None."""
    if key not in metrics:
        return f"{key} missing" if needed else None
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{key} {value!r} is not a finite number"
    if whole and value != int(value):
        return f"{key} {value!r} is not a whole number"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{key} {value!r} is out of range"
    return None
