"""Compressed client updates (``--compression``): what a client sends back in fewer bytes than float32 weights.

A client sends its update (its trained weights minus the global weights it was sent; under user-level DP, the
update it already sends), encoded:

- ``fp16``: every float array in float16 (2× fewer bytes; the update is small beside the weights, so its rounding is
  far below the weights' own precision);
- ``int8``: every float array in 8 bits, one float16 scale per row (the first axis: an item's row of a table), values
  rounded to the nearest of 255 levels of the row's largest magnitude (≈ 4× fewer bytes);
- ``int4``: the same with 15 levels (-7..7), two values a byte (≈ 7.5× fewer bytes for 64-wide rows);
- ``topk``: the ``--topk-share`` largest-magnitude entries of each float array, as int32 positions and float16
  values (``4 / (6 · share)``× fewer bytes).

``int8``, ``int4`` and ``topk`` keep what they leave out for the client's next round (error feedback, as in Seide et
al. 2014 and Stich et al. 2018): nothing of an update is lost, only delayed. The server decodes each reply back into
full arrays before any check or aggregation, so every strategy, robust rule and privacy mechanism sees what it always
saw.
A reply that does not decode into the global model's shapes is rejected with the reason.

``--download-compression`` does the same for what the server sends: the change from the weights a client already
holds (the broadcast weights of the round it last trained in), encoded as above; the server keeps the broadcast
copy (what every client that holds weights holds) and moves it by the decoded change, so the copy tracks the global
model to one rounding step without any residual. A client that holds no copy, or an older one, gets the copy whole
in float32; a client whose copy is not the one the change applies to (a restarted node) refuses the round.

Both the ClientApp (:func:`reply_arrays`, :func:`received_weights`) and the ServerApp (:func:`decoded_reply`,
``fedseqrec.server.broadcast``) use this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedseqrec.errors import UserError
from fedseqrec.federated.messages import BASE_KEY, VERSION_KEY
from fedseqrec.options import option, within
from fedseqrec.privacy.config import DP_FEDAVG, USER_LEVEL

FEDERATION = "federation"
COMPRESSIONS = ("none", "fp16", "int8", "int4", "topk")
DOWNLOADS = ("none", "fp16", "int8", "int4")
WITH_FEEDBACK = ("int8", "int4", "topk")  # modes that keep a residual at the client
SCALE, INDEX, VALUE = "::scale", "::index", "::value"
# values -L..L, symmetric (the lowest code is never used, so 0 is exact); int4's go two to a byte, each as value + 8
LEVELS = {"int8": 127, "int4": 7}


@dataclass
class CompressionConfig:
    compression: str = option(
        "none",
        "what a client sends back: none (float32), fp16 (its update in float16), int8 (8 bits and a scale per row), "
        "int4 (4 bits and a scale per row), topk (the --topk-share largest entries of each array); int8, int4 and "
        "topk carry what they leave out into the client's next round (error feedback)",
        choices=COMPRESSIONS,
        group=FEDERATION,
    )
    download_compression: str = option(
        "none",
        "what the server sends a client: none (float32 weights), or the change from the weights the client holds "
        "in fp16, int8 or int4 (a client without them gets them whole)",
        choices=DOWNLOADS,
        group=FEDERATION,
    )
    topk_share: float = option(
        0.1,
        "--compression topk: share of each array's entries sent",
        check=within(0, 1, low_open=True, high_open=False),
        group=FEDERATION,
    )

    def problem(self, secure: bool, mechanism: str, noise_shares: str, partition: str) -> str | None:
        """Why the rest of the run's configuration rules this compression out (None: it does not)."""
        down = self.download_compression
        if down != "none" and partition == "per-user":
            return (
                f"--download-compression {down} keeps the weights each client holds; with --partition per-user a "
                "client is one user, sampled a few times in a run: use silos"
            )
        if down != "none" and mechanism == DP_FEDAVG:
            return (
                f"--download-compression {down} does not combine with --privacy dp-fedavg (its clipping, Flower's mod "
                "at the client or the server's, measures an update from the weights in the message, which would be "
                "the encoded change)"
            )
        mode = self.compression
        if mode == "none":
            return None
        clash = (
            "--secure-aggregation (its masked values are field elements of a fixed size: compressing before "
            "masking saves nothing, and a masked value cannot be compressed)"
            if secure
            else "--privacy dp-fedavg (its noise is calibrated to the clipped update, and the rounding after "
            "clipping changes the update's norm)"
            if mechanism == DP_FEDAVG
            else "--privacy user-level --noise-shares server (the server's noise is calibrated to the clipped sums, "
            "and rounding them, or carrying a rounding error into the next round, changes their norm); with "
            "--noise-shares clients each silo compresses what it already releases"
            if mechanism == USER_LEVEL and noise_shares == "server"
            else None
        )
        if clash is not None:
            return f"--compression {mode} does not combine with {clash}"
        if mode in WITH_FEEDBACK and partition == "per-user":
            return (
                f"--compression {mode} keeps what it leaves out at each client for its next round; with --partition "
                "per-user a client is one user, sampled a few times in a run: use fp16, or silos"
            )
        return None


def reply_arrays(
    state: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray] | None,
    cfg: CompressionConfig,
    node_state,
    client: int,
) -> ArrayRecord:
    """What a client sends back: ``state`` as it is, or encoded as the update from ``reference`` (the global weights;
    None: ``state`` is an update already), with the error feedback kept in the node's state (Flower's
    ``context.state``) by client — a pooled simulated node serves several."""
    if cfg.compression == "none":
        return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    arrays = dict(state)
    if reference is not None:
        arrays = {k: a - reference[k] if is_compressible(a) else a for k, a in arrays.items()}
    key = f"compression-residual:{client}"
    held = node_state.get(key, {})
    sent, kept = encode(arrays, cfg.compression, cfg.topk_share, {name: held[name].numpy() for name in held})
    if kept:
        node_state[key] = ArrayRecord(array_dict={k: Array(v) for k, v in kept.items()})
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in sent.items()})


def received_weights(
    arrays: ArrayRecord, sent: ConfigRecord, mode: str, node_state, client: int
) -> dict[str, np.ndarray]:
    """The weights a client trains from: ``arrays`` as they are, or under ``--download-compression`` the weights it
    holds (kept in the node's state by client) moved by the change ``arrays`` encodes; kept for the next round.
    ``UserError`` when the change applies to weights this client does not hold."""
    if mode == "none":
        return {k: arrays[k].numpy() for k in arrays}
    key = f"broadcast:{client}"
    received = {k: arrays[k].numpy() for k in arrays}
    if BASE_KEY in sent:
        base = int(sent[BASE_KEY])
        held_version = node_state[key + ":version"]["round"] if key + ":version" in node_state else None
        if held_version != base:
            holds = "none" if held_version is None else f"round {held_version}'s"
            raise UserError(
                f"--download-compression: the server sent the change from round {base}'s weights and this client "
                f"holds {holds} (a restarted node?); it is sent whole weights next round"
            )
        held = {k: node_state[key][k].numpy() for k in node_state[key]}
        try:
            change = decode(received, {k: (v.shape, v.dtype) for k, v in held.items()}, mode)
        except ValueError as err:
            raise UserError(f"--download-compression {mode}: {err}") from err
        received = moved(held, change)
    node_state[key] = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in received.items()})
    node_state[key + ":version"] = ConfigRecord({"round": int(sent[VERSION_KEY])})
    return received


def moved(held: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights ``held`` moved by a decoded ``change`` (an array that is no float is sent as it is): the same
    operations on the server's copy and at every client, so both hold the same bits."""
    return {k: (held[k] + change[k]).astype(held[k].dtype) if is_compressible(held[k]) else change[k] for k in held}


def decoded_reply(
    sent: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    mode: str,
    reference: Mapping[str, np.ndarray] | None,
) -> ArrayRecord:
    """The server's side: a reply's arrays decoded into full arrays (weights again when ``reference``, the weights
    sent, is given); ``ValueError`` with what is wrong when they are not a valid encoding."""
    update = decode(sent, expected, mode)
    if reference is not None:
        update = {k: reference[k] + u if is_compressible(u) else u for k, u in update.items()}
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(u)) for k, u in update.items()})


def is_compressible(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.size > 0


def encode(
    update: Mapping[str, np.ndarray], mode: str, share: float = 0.1, residual: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the arrays to send, the residual to keep for the next round). ``residual``: what earlier rounds left out,
    added to this update first (``int8``, ``topk``); non-float arrays go as they are."""
    sent: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for key, array in update.items():
        if mode == "none" or not is_compressible(array):
            sent[key] = array
            continue
        full = array.astype(np.float32)
        if not np.isfinite(full).all():  # a diverged client: sent as it is, for the server to reject by name
            sent[key] = full
            continue
        if residual is not None and key in residual and residual[key].shape == full.shape:
            full = full + residual[key]
        if mode == "fp16":
            sent[key] = full.astype(np.float16)
        elif mode in LEVELS:
            values, scale = _quantized(full, LEVELS[mode])
            sent[key], sent[key + SCALE] = _packed(values) if mode == "int4" else values, scale
            kept[key] = full - _from_levels(values, scale)
        elif mode == "topk":
            index, value = _top(full, share)
            sent[key + INDEX], sent[key + VALUE] = index, value
            rest = full.copy().reshape(-1)
            rest[index] -= value.astype(np.float32)
            kept[key] = rest.reshape(full.shape)
        else:
            raise ValueError(f"unknown compression {mode!r}")
    return sent, kept


def decode(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], np.dtype]], mode: str):
    """The full update from a compressed reply, each array of the ``expected`` shape and dtype; ``ValueError`` with
    what is wrong when the reply is not a valid encoding of one."""
    decoded: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in expected.items():
        if mode == "none" or not np.issubdtype(dtype, np.floating) or math.prod(shape) == 0:
            if key not in arrays:
                raise ValueError(f"array {key!r} missing")
            decoded[key] = arrays[key]
        elif mode == "fp16":
            decoded[key] = _checked(arrays, key, shape, np.float16).astype(dtype)
        elif mode in LEVELS:
            scale = _checked(arrays, key + SCALE, (_rows(shape),), np.float16)
            if mode == "int8":
                values = _checked(arrays, key, shape, np.int8)
            else:
                values = _unpacked(key, _checked(arrays, key, _packed_shape(shape), np.uint8), shape)
            decoded[key] = _from_levels(values, scale).astype(dtype)
        else:
            decoded[key] = _from_top(arrays, key, shape).astype(dtype)
    extra = set(arrays) - {k for key in expected for k in (key, key + SCALE, key + INDEX, key + VALUE)}
    if extra:
        raise ValueError(f"arrays the model does not have: {', '.join(sorted(extra)[:3])}")
    return decoded


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (what grows with the model; Flower's framing of each array is a few bytes more)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def record_bytes(record: ArrayRecord) -> int:
    """:func:`payload_bytes` of a received record, from each array's shape and dtype (nothing deserialised); an
    array whose dtype is no numpy dtype counts its raw bytes (the reply is refused later)."""
    total = 0
    for array in record.values():
        try:
            total += math.prod(array.shape) * np.dtype(array.dtype).itemsize
        except (TypeError, ValueError):
            total += len(array.data)
    return total


def _rows(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) >= 2 else 1


def _quantized(full: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values in -levels..levels of the shape of ``full``, and a float16 scale a row."""
    rows = full.reshape(_rows(full.shape), -1)
    # float16 scales: the largest magnitude / levels, never 0 (a zero row stays zero); a scale is rounded up to what
    # float16 holds, so no value leaves the range
    top = np.abs(rows).max(axis=1)
    scale = np.maximum(top / levels, np.float32(2.0**-24)).astype(np.float16)
    scale = np.where(scale.astype(np.float32) * levels < top, np.nextafter(scale, np.float16(np.inf)), scale)
    values = np.clip(np.rint(rows / scale.astype(np.float32)[:, None]), -levels, levels).astype(np.int8)
    return values.reshape(full.shape), scale


def _from_levels(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows = values.reshape(len(scale), -1).astype(np.float32) * scale.astype(np.float32)[:, None]
    return rows.reshape(values.shape)


def _packed_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """int4: a row's values two to a byte (an odd row ends with a half-used byte)."""
    rows = _rows(shape)
    return rows, -(-math.prod(shape) // rows // 2)


def _packed(values: np.ndarray) -> np.ndarray:
    rows = values.reshape(_rows(values.shape), -1).astype(np.int16) + 8
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)), constant_values=8)  # the spare half byte holds a 0
    return (rows[:, 0::2] | (rows[:, 1::2] << 4)).astype(np.uint8)


def _unpacked(key: str, packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    codes = np.empty((packed.shape[0], 2 * packed.shape[1]), dtype=np.int16)
    codes[:, 0::2], codes[:, 1::2] = packed & 15, packed >> 4
    codes = codes[:, : math.prod(shape) // packed.shape[0]]
    if (codes == 0).any():  # -8: a code no encoder writes
        raise ValueError(f"array {key!r}: a 4-bit value outside -7..7")
    return (codes - 8).astype(np.int8).reshape(shape)


def _top(full: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    flat = full.reshape(-1)
    k = max(1, math.ceil(share * flat.size))
    index = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :] if k < flat.size else np.arange(flat.size)
    index = np.sort(index).astype(np.int32)
    return index, flat[index].astype(np.float16)


def _from_top(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    index = arrays.get(key + INDEX)
    value = arrays.get(key + VALUE)
    if index is None or value is None:
        raise ValueError(f"array {key!r}: positions or values missing")
    index, value = np.asarray(index), np.asarray(value)
    if index.dtype != np.int32 or value.dtype != np.float16 or index.ndim != 1 or index.shape != value.shape:
        raise ValueError(f"array {key!r}: expected int32 positions and float16 values of one length")
    if len(index) > size or (len(index) and (index.min() < 0 or index.max() >= size)):
        raise ValueError(f"array {key!r}: positions outside its {size} entries")
    if len(np.unique(index)) != len(index):
        raise ValueError(f"array {key!r}: a position given twice")
    flat = np.zeros(size, dtype=np.float32)
    flat[index] = value.astype(np.float32)
    return flat.reshape(shape)


def _checked(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    array = arrays.get(key)
    if array is None:
        raise ValueError(f"array {key!r} missing")
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"array {key!r}: non-finite values (a diverged client)")
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"array {key!r}: {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}")
    return array
