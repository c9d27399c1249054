"""What the server checks in a client's training reply before anything of it is aggregated or accounted.

One broken or hostile reply must not wreck the round: a NaN element or weights ×1e30 would make the whole global
model NaN, a (1, 16) array would be broadcast into every row of a table, a missing key or a partition id that is
not the client's would stop the run, and ``num-examples`` = 1e9 would dominate the weighted average. Each reply is
checked against the global model's keys, shapes and dtypes; a bad one is rejected with its reason, and the round
goes on with the others (``--min-clients`` still applies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from fedseqrec.checks import number_problem
from fedseqrec.federated.compression import decoded_reply, record_bytes

ARRAYS = "arrays"
MAX_LOSS = 1e6  # far above any loss of a model that learns (a cross-entropy starts near ln(items)): the round's
# mean loss weighs each by its examples, and 1e308 × examples overflows to a null figure


@dataclass(frozen=True)
class ReplyRules:
    """``expected``: key → (shape, dtype) of what a reply's arrays must hold; ``weights``: the reply carries model
    weights (its update is the difference from ``current``), else an update itself (user-level DP's gradient sum);
    ``max_examples``: most training examples a client can have; ``max_update_norm``: an optional ℓ2 bound on a
    client's whole update."""

    expected: dict[str, tuple[tuple[int, ...], np.dtype]]
    weights: bool = True
    max_examples: int = 2**31 - 1
    max_update_norm: float | None = None
    max_update_ratio: float = 0.0  # of the global model's norm (weights replies; 0: no bound)

    @classmethod
    def for_arrays(cls, arrays: ArrayRecord, keys=None, **options) -> ReplyRules:
        chosen = list(arrays.keys()) if keys is None else list(keys)
        expected = {k: (tuple(arrays[k].shape), np.dtype(arrays[k].numpy().dtype)) for k in chosen}
        return cls(expected, **options)


def metrics_problem(reply: Message, partition: int) -> str | None:
    """Why the reply's metrics cannot be trusted (None: they can): every field the round reads — the partition
    id, ``num-examples``, whether the client declined, and for a trained round its loss, steps and seconds — of the
    right type and in range. A mechanism checks its own fields (``PrivacyMechanism.reply_problem``)."""
    if "metrics" not in reply.content.metric_records:
        return "no metrics record"
    metrics = reply.content["metrics"]
    sent = metrics.get("partition-id")
    if not _is_int(sent) or int(sent) != partition:
        return f"partition-id {sent!r} is not the client's ({partition})"
    examples = metrics.get("num-examples")
    if not _is_int(examples) or int(examples) < 0:
        return f"num-examples {examples!r} is not a non-negative whole number"
    declined = metrics.get("declined", 0)
    if declined not in (0, 1) or isinstance(declined, bool | float):
        return f"declined {declined!r} is neither 0 nor 1"
    if declined:
        arrays = reply.content.array_records
        return "declined, yet sends arrays" if arrays or int(examples) else None
    return (
        number_problem(metrics, "train-loss", high=MAX_LOSS)
        or number_problem(metrics, "seconds", low=0.0)
        or (number_problem(metrics, "steps", low=0.0, whole=True, needed=False))
    )


def update_problem(reply: Message, rules: ReplyRules, current: ArrayRecord) -> str | None:
    """Why the reply's arrays may not be aggregated (None: they may). A reply without arrays has nothing to check
    if its client declined (no privacy budget left) or had no examples; one that trained must send its update."""
    records = reply.content.array_records
    metrics = reply.content["metrics"]
    examples = int(metrics["num-examples"])
    if not records:
        trained = examples > 0 and not metrics.get("declined", 0)
        return f"no update, though it trained on {examples} examples and did not decline" if trained else None
    if examples > rules.max_examples:
        return f"num-examples {examples} exceeds the {rules.max_examples} users of the federation"
    if list(records) != [ARRAYS]:
        return f"array records {sorted(records)}, expected only {ARRAYS!r}"
    arrays = records[ARRAYS]
    missing, extra = sorted(set(rules.expected) - set(arrays)), sorted(set(arrays) - set(rules.expected))
    if missing or extra:
        return "keys differ from the global model's: " + "; ".join(
            part for part in (_listed("missing", missing), _listed("unexpected", extra)) if part
        )
    squared, model_squared = 0.0, 0.0
    relative = rules.weights and rules.max_update_ratio > 0
    for key, (shape, dtype) in rules.expected.items():
        value = arrays[key].numpy()
        if tuple(value.shape) != shape:
            return f"{key}: shape {tuple(value.shape)}, expected {shape}"
        if value.dtype != dtype:
            return f"{key}: dtype {value.dtype}, expected {dtype}"
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"{key}: {int((~np.isfinite(value)).sum())} non-finite values"
        if (rules.max_update_norm is not None or relative) and value.dtype.kind == "f":
            before = current[key].numpy().astype(np.float64) if rules.weights else 0.0
            squared += float(np.square(value.astype(np.float64) - before).sum())
            model_squared += float(np.square(before).sum())
    norm = math.sqrt(squared)
    if rules.max_update_norm is not None and norm > rules.max_update_norm:
        return f"update norm {norm:.4g} exceeds --max-update-norm {rules.max_update_norm:g}"
    if relative and model_squared > 0 and norm > rules.max_update_ratio * math.sqrt(model_squared):
        return (
            f"update norm {norm:.4g} is over {rules.max_update_ratio:g} times the global model's "
            f"{math.sqrt(model_squared):.4g} (--max-update-ratio)"
        )
    return None


def _is_int(value) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value == int(value)


def _listed(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"{what} {shown}"


def decompressed(reply: Message, rules: ReplyRules, current: ArrayRecord, mode: str, sizes: list[int]) -> str | None:
    """The reply's bytes counted (appended to ``sizes``) and, under ``--compression``, its arrays decoded in place
    into the full arrays every later check and the aggregation read; why not, when they don't decode."""
    if ARRAYS not in reply.content.array_records:  # declined, or a SecAgg+ stage (no compression there)
        return None
    sizes.append(record_bytes(reply.content[ARRAYS]))
    if mode == "none":
        return None
    arrays = reply.content[ARRAYS]
    sent = {key: arrays[key].numpy() for key in arrays}
    reference = {k: current[k].numpy() for k in current} if rules.weights else None
    try:
        reply.content[ARRAYS] = decoded_reply(sent, rules.expected, mode, reference)
    except ValueError as err:
        return f"--compression {mode}: {err}"
    return None
