"""Compressed client updates (``--compression``) and int8 serving weights (``--int8``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from helpers import TINY, client_context, message

from fedseqrec.client.client_app import make_client_app
from fedseqrec.data.dataset import load_dataset
from fedseqrec.errors import UserError
from fedseqrec.federated.compression import decode, encode, payload_bytes, received_weights, record_bytes
from fedseqrec.federated.task import build_global_model
from fedseqrec.models.batching import evaluation_batches
from fedseqrec.models.quantization import int8_for_serving, is_int8
from fedseqrec.models.registry import build_model, model_config_for
from fedseqrec.server.broadcast import Broadcast
from fedseqrec.simulation.engine import simulate

SHAPES = {"table": (300, 16), "bias": (300,), "steps": (1,)}


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    update = {k: rng.standard_t(3, size=s).astype(np.float32) * 0.01 for k, s in SHAPES.items() if k != "steps"}
    return {**update, "steps": np.array([7], dtype=np.int64)}


def _expected(update):
    return {k: (v.shape, v.dtype) for k, v in update.items()}


def test_fp16_halves_the_bytes_and_rounds_each_value_to_float16():
    update = _update()
    sent, kept = encode(update, "fp16")
    assert kept == {} and payload_bytes(sent) == payload_bytes(update) - 2 * (300 * 16 + 300)
    back = decode(sent, _expected(update), "fp16")
    assert back["table"].dtype == np.float32 and np.array_equal(back["steps"], update["steps"])
    assert np.allclose(back["table"], update["table"], rtol=2**-11, atol=2**-24)  # (float16 subnormals)


def test_int8_is_within_half_a_step_of_each_rows_scale_and_four_times_smaller():
    update = _update()
    sent, kept = encode(update, "int8")
    back = decode(sent, _expected(update), "int8")
    step = np.abs(update["table"]).max(axis=1) / 127
    assert (np.abs(back["table"] - update["table"]) <= step[:, None] * 0.5 * (1 + 2**-10) + 1e-12).all()
    assert np.allclose(back["table"] + kept["table"], update["table"], atol=1e-7)  # nothing lost: kept for later
    # a byte a value, and a float16 scale a row (the bias: one row); the int64 step count as it is
    assert payload_bytes(sent) == (300 * 16 + 2 * 300) + (300 + 2) + 8


def test_int4_is_within_half_a_step_two_values_a_byte():
    update = {**_update(), "odd": np.array([[0.3, -0.1, 0.05], [0.0, 0.0, 0.0]], dtype=np.float32)}
    sent, kept = encode(update, "int4")
    assert sent["table"].dtype == np.uint8 and sent["table"].shape == (300, 8) and sent["odd"].shape == (2, 2)
    back = decode(sent, _expected(update), "int4")
    for key in ("table", "odd"):
        step = np.abs(update[key]).max(axis=1) / 7
        assert (np.abs(back[key] - update[key]) <= step[:, None] * 0.5 * (1 + 2**-10) + 1e-12).all()
        assert np.allclose(back[key] + kept[key], update[key], atol=1e-7)
    assert np.array_equal(back["odd"][1], np.zeros(3))
    assert back["odd"][0, 0] == 7 * sent["odd::scale"][0].astype(np.float32)
    # half a byte a value (the odd rows' spare half bytes included), a float16 scale a row; the step count as it is
    assert payload_bytes(sent) == (300 * 8 + 2 * 300) + (150 + 2) + (2 * 2 + 2 * 2) + 8


def test_int4_refuses_the_code_no_encoder_writes_and_a_wrong_width():
    update = _update()
    sent, _ = encode(update, "int4")
    broken = dict(sent, table=sent["table"] & np.uint8(0xF0))  # a low half byte of 0: the value -8
    with pytest.raises(ValueError, match="4-bit value outside -7..7"):
        decode(broken, _expected(update), "int4")
    with pytest.raises(ValueError, match=r"expected uint8\[300, 8\]"):
        decode(dict(sent, table=sent["table"][:, :7]), _expected(update), "int4")


def test_topk_sends_the_largest_entries_and_keeps_the_rest():
    update = _update()
    sent, kept = encode(update, "topk", share=0.05)
    index = sent["table::index"]
    assert len(index) == 240 and sent["table::value"].dtype == np.float16
    magnitudes = np.abs(update["table"]).reshape(-1)
    assert magnitudes[index].min() >= np.delete(magnitudes, index).max()
    back = decode(sent, _expected(update), "topk")
    assert np.count_nonzero(back["table"]) <= 240
    assert np.allclose(back["table"] + kept["table"], update["table"], atol=1e-7)


@pytest.mark.parametrize("mode", ["int8", "int4", "topk"])
def test_error_feedback_delivers_every_update_in_the_end(mode):
    """Σ of what the server decoded over rounds = Σ of the updates − what the client still holds: nothing lost."""
    residual, delivered, total = None, 0.0, 0.0
    for seed in range(6):
        update = _update(seed)
        sent, residual = encode(update, mode, share=0.1, residual=residual)
        delivered = delivered + decode(sent, _expected(update), mode)["table"]
        total = total + update["table"]
    assert np.allclose(delivered + residual["table"], total, atol=1e-6)
    assert np.abs(residual["table"]).max() < np.abs(total).max()


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda s: s.update({"table": s["table"].astype(np.int16)}), "int16.*expected int8"),
        (lambda s: s.update({"table::scale": np.ones(7, dtype=np.float16)}), "expected float16\\[300\\]"),
        (lambda s: s.pop("bias"), "'bias' missing"),
        (lambda s: s.update({"other": np.zeros(1)}), "arrays the model does not have: other"),
        (lambda s: s.update({"bias": np.full(300, np.nan, dtype=np.float32)}), "non-finite values"),
    ],
)
def test_a_reply_that_is_no_valid_int8_encoding_is_refused_with_the_reason(tamper, problem):
    update = _update()
    sent, _ = encode(update, "int8")
    tamper(sent)
    with pytest.raises(ValueError, match=problem):
        decode(sent, _expected(update), "int8")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda s: s["table::index"].__setitem__(0, 10**6), "positions outside its 4800 entries"),
        (lambda s: s["table::index"].__setitem__(1, s["table::index"][0]), "a position given twice"),
        (lambda s: s.update({"table::value": s["table::value"][:-1]}), "of one length"),
        (lambda s: s.pop("table::index"), "positions or values missing"),
    ],
)
def test_a_reply_that_is_no_valid_topk_encoding_is_refused_with_the_reason(tamper, problem):
    update = _update()
    sent, _ = encode(update, "topk", share=0.1)
    tamper(sent)
    with pytest.raises(ValueError, match=problem):
        decode(sent, _expected(update), "topk")


def test_compression_is_refused_where_the_maths_does_not_allow_it():
    with pytest.raises(UserError, match="--compression int8 does not combine with --secure-aggregation"):
        TINY.replace(compression="int8", secure_aggregation=True).validate()
    with pytest.raises(UserError, match="--compression fp16 does not combine with --privacy dp-fedavg"):
        TINY.replace(compression="fp16", mechanism="dp-fedavg", noise_multiplier=1.0).validate()
    with pytest.raises(UserError, match="--noise-shares server"):
        TINY.replace(compression="topk", mechanism="user-level", noise_multiplier=1.0).validate()
    with pytest.raises(UserError, match="with --partition per-user a client is one user"):
        TINY.replace(compression="int8", partition="per-user", clients=None).validate()
    TINY.replace(compression="int8", mechanism="dp-sgd", noise_multiplier=1.0).validate()  # post-processing
    TINY.replace(compression="fp16", partition="per-user", clients=None).validate()


@pytest.mark.parametrize(("mode", "dtype", "fewer"), [("int8", np.int8, 3.5), ("int4", np.uint8, 6.0)])
def test_a_client_sends_its_update_compressed_and_keeps_the_residual(tmp_path, mode, dtype, fewer):
    cfg = TINY.replace(compression=mode, out=str(tmp_path))
    ds = load_dataset(cfg.data)
    arrays = ArrayRecord(build_global_model(ds.sequences, cfg.model).state_dict())
    context = client_context(cfg, 0)
    app = make_client_app()
    reply = app(message("train", arrays, cfg), context)  # the ClientApp as Flower calls it
    sent = reply.content["arrays"]
    assert sent["scorer.weight"].numpy().dtype == dtype and "scorer.weight::scale" in sent
    assert "compression-residual:0" in context.state
    full = sum(a.numpy().nbytes for a in arrays.values())
    assert full / payload_bytes({k: sent[k].numpy() for k in sent}) > fewer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "download", "fewer"), [("int8", "none", 3.5), ("int4", "none", 6.0), ("int4", "int4", 6.0)]
)
def test_a_simulation_with_compressed_updates_learns_and_counts_its_bytes(tmp_path, mode, download, fewer):
    plain, packed = tmp_path / "plain", tmp_path / mode
    simulate(TINY.replace(rounds=2), out=plain)
    simulate(TINY.replace(rounds=2, compression=mode, download_compression=download), out=packed)
    rounds = {f: [json.loads(x) for x in (f / "metrics.jsonl").read_text().splitlines()] for f in (plain, packed)}
    assert all(r["failed"] == [] and r["clients"] == 3 for f in rounds for r in rounds[f])
    assert rounds[plain][1]["update_bytes"] / rounds[packed][1]["update_bytes"] > fewer
    # round 1: nobody holds weights, all are sent whole; round 2: the change from them
    assert (
        rounds[packed][0]["broadcast_bytes"]
        == rounds[plain][0]["broadcast_bytes"]
        == rounds[plain][1]["broadcast_bytes"]
    )
    assert rounds[plain][1]["broadcast_bytes"] / rounds[packed][1]["broadcast_bytes"] > (
        fewer if download != "none" else 1 - 1e-9
    )
    # round 1 trains from the same weights: the same loss; the aggregate differs only by the rounding
    assert rounds[packed][0]["loss"] == pytest.approx(rounds[plain][0]["loss"])
    ndcg = [rounds[f][-1]["valid"]["NDCG@10"] for f in (plain, packed)]
    assert ndcg[1] == pytest.approx(ndcg[0], rel=0.1, abs=0.01)


def test_int8_serving_weights_score_like_the_float_model():
    ds = load_dataset(TINY.data)
    for tie in (True, False):
        cfg = model_config_for(ds.sequences, TINY.model.__class__.from_dict({**TINY.model.to_dict(), "tie_items": tie}))
        model = build_model("sasrec", cfg, ds.sequences).eval()
        quantized = int8_for_serving(model)
        assert is_int8(quantized) and not is_int8(model)
        chunk = next(iter(evaluation_batches(ds.sequences, ds.split, "test", None, cfg.max_len, 64)))
        with torch.no_grad():
            exact, rounded = model.full_sort_predict(chunk.batch), quantized.full_sort_predict(chunk.batch)
        spread = exact[:, 1:].abs().max()
        assert (exact[:, 1:] - rounded[:, 1:]).abs().max() < 0.05 * spread
    with pytest.raises(UserError, match="--int8: dynamic int8 quantization runs on the CPU"):
        int8_for_serving(model.to("meta"))


def test_an_attack_and_compressed_updates_are_refused_together(tmp_path):
    from fedseqrec.simulation.attacks import AttackConfig

    with pytest.raises(UserError, match="--attack does not combine with --compression int8"):
        simulate(TINY.replace(compression="int8"), out=tmp_path / "x", attack=AttackConfig(attack="scale"))


def test_the_server_decodes_only_replies_that_carry_arrays():
    """A SecAgg+ stage reply or a declined client has no ``arrays`` record: nothing to count or decode (a
    regression: the server once looked it up and stopped the round)."""
    from flwr.app import Message, MetricRecord, RecordDict

    from fedseqrec.server.replies import ReplyRules, decompressed

    current = ArrayRecord({"w": torch.zeros(3)})
    rules = ReplyRules.for_arrays(current)
    sizes: list[int] = []
    stage = Message(
        RecordDict({"fitres.parameters": ArrayRecord(), "metrics": MetricRecord({"x": 1})}),
        dst_node_id=1,
        message_type="train",
    )
    assert decompressed(stage, rules, current, "int8", sizes) is None and sizes == []
    sent, _ = encode({"w": np.array([0.5, -1.0, 0.25], dtype=np.float32)}, "int8")
    reply = Message(
        RecordDict({"arrays": ArrayRecord(array_dict={k: Array(v) for k, v in sent.items()})}),
        dst_node_id=1,
        message_type="train",
    )
    assert decompressed(reply, rules, current, "int8", sizes) is None and sizes == [3 + 2]
    assert np.allclose(reply.content["arrays"]["w"].numpy(), [0.5, -1.0, 0.25], atol=1 / 127)
    sent["w"] = sent["w"][:2]
    broken = Message(
        RecordDict({"arrays": ArrayRecord(array_dict={k: Array(v) for k, v in sent.items()})}),
        dst_node_id=1,
        message_type="train",
    )
    assert "--compression int8: array 'w'" in decompressed(broken, rules, current, "int8", sizes)


def _round(broadcast, weights, chosen, states, server_round):
    """One round's download: the server addresses ``chosen`` clients (node 100 + client), each client takes what it
    was sent; (what each client now holds, or its refusal; the bytes each was sent)."""
    record = ArrayRecord(array_dict={k: Array(v) for k, v in weights.items()})
    messages = [
        Message(
            RecordDict({"arrays": record, "config": ConfigRecord({"server-round": server_round})}), 100 + c, "train"
        )
        for c in chosen
    ]
    messages = broadcast.address(messages, {100 + c: c for c in chosen}, record, server_round)
    held = {}
    for c, m in zip(chosen, messages, strict=True):
        try:
            held[c] = received_weights(m.content["arrays"], m.content["config"], broadcast.mode, states[c], c)
        except UserError as err:
            held[c] = err
    return held, [record_bytes(m.content["arrays"]) for m in messages]


def test_download_compression_keeps_every_client_on_the_servers_copy_and_delivers_the_rounding_later():
    rng = np.random.default_rng(0)
    weights = {"table": rng.normal(size=(50, 64)).astype(np.float32), "steps": np.array([3], dtype=np.int64)}
    broadcast, states = Broadcast("int4"), {c: RecordDict() for c in range(3)}
    held, sizes = _round(broadcast, weights, [0, 1, 2], states, 1)  # nobody holds weights yet: all whole
    assert all(np.array_equal(held[c]["table"], weights["table"]) for c in held) and len(set(sizes)) == 1
    broadcast.delivered([0, 1, 2])
    weights = {"table": weights["table"] + 0.01 * rng.normal(size=(50, 64)).astype(np.float32), "steps": np.array([4])}
    held, sizes = _round(broadcast, weights, [0, 1], states, 2)
    assert sizes[0] < (50 * 64 * 4) / 7 and np.array_equal(held[0]["steps"], [4])
    for c in (0, 1):  # the same bits as the server's copy, within a rounding step of the global model
        assert all(np.array_equal(held[c][k], broadcast.copy[k]) for k in weights)
    step = np.abs(weights["table"] - held[0]["table"]).max()
    assert 0 < step <= 0.01 * 5 / 7
    broadcast.delivered([0])  # client 1's reply failed: it is sent whole weights next time
    held, sizes = _round(broadcast, weights, [0, 1, 2], states, 3)
    assert sizes[0] < sizes[1] == sizes[2] and all(
        np.array_equal(held[c]["table"], broadcast.copy["table"]) for c in held
    )
    errors = []
    for r in range(4, 7):  # the global model stands still: what each change left out goes out with the next
        broadcast.delivered([0, 1, 2])
        held, _ = _round(broadcast, weights, [0, 1, 2], states, r)
        errors.append(np.abs(held[0]["table"] - weights["table"]).max())
    assert errors[1] < errors[0] / 7 and errors[2] < errors[1] / 7 and errors[2] < 1e-6  # down to float32's last bits


def test_a_client_that_does_not_hold_the_weights_a_change_applies_to_refuses_the_round():
    weights = {"table": np.ones((4, 8), dtype=np.float32)}
    broadcast, states = Broadcast("int8"), {0: RecordDict(), 1: RecordDict()}
    _round(broadcast, weights, [0, 1], states, 1)
    broadcast.delivered([0, 1])
    states[1] = RecordDict()  # node 1 restarted and lost what it held
    held, _ = _round(broadcast, {"table": weights["table"] * 2}, [0, 1], states, 2)
    assert isinstance(held[1], UserError) and "holds none" in str(held[1])
    assert np.allclose(held[0]["table"], 2.0, rtol=1 / 127)
    with pytest.raises(UserError, match="--download-compression int4 keeps the weights each client holds"):
        TINY.replace(download_compression="int4", partition="per-user", clients=None).validate()
    with pytest.raises(UserError, match="--download-compression int8 does not combine with --privacy dp-fedavg"):
        TINY.replace(download_compression="int8", mechanism="dp-fedavg").validate()


@pytest.mark.slow
@pytest.mark.parametrize(
    "private",
    [{"secure_aggregation": True}, {"mechanism": "user-level", "users_per_round": 40, "noise_multiplier": 1.0}],
    ids=["secure-aggregation", "user-level"],
)
def test_compressed_downloads_combine_with_secure_aggregation_and_user_level_dp(tmp_path, private):
    simulate(TINY.replace(rounds=2, download_compression="int4", **private), out=tmp_path / "run")
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["failed"] == [] and r["clients"] == 3 for r in rounds)
    assert rounds[0]["broadcast_bytes"] / rounds[1]["broadcast_bytes"] > 6  # whole weights, then the int4 change
