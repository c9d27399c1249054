"""JSON as strict readers accept it: a diverged loss or an undefined metric is written as null, never as the
``NaN`` / ``Infinity`` tokens ``json.dumps`` writes by default (not JSON; ``jq`` and browsers refuse them)."""

from __future__ import annotations

import json
import math


def json_safe(value):
    """``value`` with every non-finite float as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value, **options) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **options)
