"""Secure aggregation (SecAgg+): the server's stages against Flower's own client mod, in one process.

An in-process grid hands each message to a ClientApp whose train handler sits behind our
``secure_aggregation_mod`` (Flower's ``secaggplus_mod``), one Context per node, as a SuperNode keeps it. The
server's result must equal the plain weighted mean (or sum) within the quantisation bound, with and without clients
dropping out, and one client's masked vector must tell nothing of its values.
"""

from __future__ import annotations

import json
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from helpers import TINY

from fedseqrec.client.secure_aggregation import secure_aggregation_mod
from fedseqrec.errors import RunError, UserError
from fedseqrec.federated.mechanisms import make_mechanism
from fedseqrec.privacy.mechanism import RunFacts
from fedseqrec.privacy.quantised_sum import quantised_sensitivity, rounding_bound
from fedseqrec.server.loop import Progress
from fedseqrec.server.replies import ReplyRules
from fedseqrec.server.secure_aggregation import SecAggSettings, SecureRound, aggregate_bound, most_levels

SHAPES = {"emb.weight": (50, 8), "out.bias": (50,), "norm.weight": (8,)}


def client_values(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: rng.normal(0.0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}


def client_examples(node: int) -> int:
    return 10 + 7 * node


class InProcessGrid:
    """Messages go to a ClientApp per node in this process; ``fail`` maps a node to the stage it fails at
    (setup, share_keys, collect_masked_vectors or unmask): it replies with an error from then on."""

    def __init__(self, nodes: list[int], fail: dict[int, str] | None = None, declined: tuple[int, ...] = ()):
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in nodes}
        self.fail, self.declined, self.failed = fail or {}, declined, set()
        self.masked: dict[int, list[np.ndarray]] = {}
        self.app = ClientApp()

        @self.app.train(mods=[secure_aggregation_mod])
        def train(msg: Message, context: Context) -> Message:
            node = context.node_id
            metrics = MetricRecord({"num-examples": client_examples(node), "partition-id": node, "train-loss": 1.0})
            if node in self.declined:
                metrics = MetricRecord({"num-examples": 0, "partition-id": node, "declined": 1})
                return Message(RecordDict({"metrics": metrics}), reply_to=msg)
            arrays = ArrayRecord({k: Array(v) for k, v in client_values(node).items()})
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            node = message.metadata.dst_node_id
            stage = message.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if self.fail.get(node) == stage or node in self.failed:
                self.failed.add(node)
                replies.append(Message(Error(0, f"node {node} is gone"), reply_to=message))
                continue
            reply = self.app(message, self.contexts[node])
            config = reply.content.config_records[RECORD_KEY_CONFIGS]
            if Key.MASKED_PARAMETERS in config:
                self.masked[node] = [bytes_to_ndarray(b) for b in config[Key.MASKED_PARAMETERS]]
            replies.append(reply)
        return replies


def train_messages(nodes: list[int], current: ArrayRecord) -> list[Message]:
    content = RecordDict({"arrays": current, "config": ConfigRecord({"server-round": 1})})
    return [Message(content, dst_node_id=n, message_type=MessageType.TRAIN, group_id="1") for n in nodes]


def secure_round(grid, nodes, sums=False, shares=None, threshold=0.6):
    current = ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})
    rules = ReplyRules.for_arrays(current, weights=not sums)
    max_weight = 1 if sums else max(client_examples(n) for n in nodes)
    settings = SecAggSettings(shares, threshold, 8.0, max_weight, len(nodes))
    warnings: list[str] = []
    round_ = SecureRound(grid, settings, current, rules, warnings.append)
    sent, replies = round_.exchange(train_messages(nodes, current), None)
    return round_, current, sent, replies, warnings


def test_weighted_mean_equals_plain_aggregation_within_the_bound():
    nodes = [11, 12, 13, 14, 15, 16]
    grid = InProcessGrid(nodes)
    round_, current, _, replies, _ = secure_round(grid, nodes)
    ok = [r for r in replies if not r.has_error()]
    assert len(ok) == len(nodes)
    assert all(not record for r in ok for record in r.content.array_records.values())  # nothing in the clear
    reply, figures = round_.aggregate(ok, current)
    weights = {n: client_examples(n) for n in nodes}
    total = sum(weights.values())
    for key in SHAPES:
        plain = sum(weights[n] * client_values(n)[key].astype(np.float64) for n in nodes) / total
        error = np.abs(reply.content["arrays"][key].numpy() - plain).max()
        assert 0 < error <= figures["secagg_bound"], key
    assert figures["secagg_bound"] == aggregate_bound(len(nodes), figures["secagg_weight"], 8.0, False, 2**22)
    assert figures["secagg_bound"] < 1e-4
    assert reply.content["metrics"]["num-examples"] == total


def test_one_masked_vector_tells_nothing_of_the_client():
    nodes = [1, 2, 3, 4]
    grid = InProcessGrid(nodes)
    secure_round(grid, nodes)
    index = 1 + sorted(SHAPES).index("out.bias")  # after the weight factor, the arrays by name
    masked = grid.masked[2][index].astype(np.float64).ravel()  # node 2's "out.bias", as the server received it
    values = client_values(2)["out.bias"].astype(np.float64).ravel()
    # Uniform on [0, 2^32): unrelated to the values (a plain quantisation would be ≈ (v + 8) / 16 · 2^22 · w).
    assert masked.max() > 2**31 and masked.min() < 2**31
    assert abs(np.corrcoef(masked, values)[0, 1]) < 0.5


@pytest.mark.parametrize("stage", ["collect_masked_vectors", "unmask"])
def test_a_client_dropping_out_leaves_the_others_mean(stage):
    nodes = [21, 22, 23, 24, 25]
    grid = InProcessGrid(nodes, fail={23: stage})
    round_, current, _, replies, warnings = secure_round(grid, nodes)
    ok = [r for r in replies if not r.has_error()]
    reply, figures = round_.aggregate(ok, current)
    kept = [n for n in nodes if n != 23] if stage != "unmask" else nodes
    total = sum(client_examples(n) for n in kept)
    plain = sum(client_examples(n) * client_values(n)["emb.weight"].astype(np.float64) for n in kept) / total
    assert np.abs(reply.content["arrays"]["emb.weight"].numpy() - plain).max() <= figures["secagg_bound"]
    assert figures["secagg_dropped"] == (1 if stage != "unmask" else 0)
    if stage == "unmask":  # logged by the round; a training failure comes back to the loop as an error reply
        assert any("node 23 dropped out of secure aggregation at unmask" in w for w in warnings)
    else:
        assert [r.metadata.src_node_id for r in replies if r.has_error()] == [23]


def test_a_refused_reply_is_dropped_not_unmasked():
    """The loop refuses a reply after it arrived (bad metrics, a shrunk ledger): it is left out as a dropout."""
    nodes = [31, 32, 33, 34, 35]
    grid = InProcessGrid(nodes)
    round_, current, _, replies, _ = secure_round(grid, nodes)
    accepted = [r for r in replies if r.metadata.src_node_id != 32]
    reply, figures = round_.aggregate(accepted, current)
    kept = [n for n in nodes if n != 32]
    total = sum(client_examples(n) for n in kept)
    plain = sum(client_examples(n) * client_values(n)["out.bias"].astype(np.float64) for n in kept) / total
    assert np.abs(reply.content["arrays"]["out.bias"].numpy() - plain).max() <= figures["secagg_bound"]
    assert figures["secagg_dropped"] == 1


def test_sums_and_declined_clients():
    nodes = [41, 42, 43, 44]
    grid = InProcessGrid(nodes, declined=(44,))
    round_, current, sent, replies, _ = secure_round(grid, nodes, sums=True)
    assert all(m.content["config"]["secagg-sum"] for m in sent)
    reply, figures = round_.aggregate(replies, current)
    plain = sum(client_values(n)["norm.weight"].astype(np.float64) for n in nodes[:3])
    assert np.abs(reply.content["arrays"]["norm.weight"].numpy() - plain).max() <= figures["secagg_bound"]
    assert figures["secagg_bound"] == pytest.approx(4 * 16 / 2**22)


def test_sparse_secagg_plus_neighbourhoods():
    nodes = list(range(101, 110))
    grid = InProcessGrid(nodes, fail={105: "collect_masked_vectors"})
    round_, current, _, replies, _ = secure_round(grid, nodes, shares=5, threshold=0.6)
    assert all(len(n) == 5 for n in round_.state.neighbours.values())
    ok = [r for r in replies if not r.has_error()]
    reply, figures = round_.aggregate(ok, current)
    kept = [n for n in nodes if n != 105]
    total = sum(client_examples(n) for n in kept)
    plain = sum(client_examples(n) * client_values(n)["emb.weight"].astype(np.float64) for n in kept) / total
    assert np.abs(reply.content["arrays"]["emb.weight"].numpy() - plain).max() <= figures["secagg_bound"]


def test_too_many_dropouts_halt_before_anything_is_unmasked():
    nodes = [51, 52, 53, 54, 55]
    grid = InProcessGrid(nodes, fail={51: "collect_masked_vectors", 52: "collect_masked_vectors"})
    round_, current, _, replies, _ = secure_round(grid, nodes, threshold=0.8)  # 4 of 5 must stay
    ok = [r for r in replies if not r.has_error()]
    with pytest.raises(RunError, match="too many dropped out"):
        round_.aggregate(ok, current)


# --- real simulations ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_simulated_round_with_secagg_reaches_the_plain_weights(tmp_path):
    """The same round (same clients, same seeds) with and without SecAgg+: the global weights differ only by the
    quantisation the round reports (its bound), and the run says how it aggregated."""
    import torch

    from fedseqrec.simulation.engine import simulate

    cfg = TINY.replace(rounds=1)
    simulate(cfg, out=tmp_path / "plain")
    messages: list[str] = []
    results, _ = simulate(
        cfg.replace(secure_aggregation=True), out=tmp_path / "secure", progress=Progress(on_message=messages.append)
    )
    plain = torch.load(tmp_path / "plain" / "model_last.pt", weights_only=True)
    secure = torch.load(tmp_path / "secure" / "model_last.pt", weights_only=True)
    record = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text().splitlines()[0])
    bound = record["secure"]["secagg_bound"]
    assert record["secure"]["secagg_clients"] == 3 and record["secure"]["clipped"] == 0
    differences = [float((secure[k] - plain[k]).abs().max()) for k in plain]
    assert 0 < max(differences) <= bound < 1e-3
    assert results["secure_aggregation"]["shares"] == 3
    assert any("secure aggregation (SecAgg+)" in m for m in messages)


@pytest.mark.slow
def test_user_level_noise_shares_under_secagg(tmp_path):
    """The federation-wide mechanism with the noise added by the silos, summed under SecAgg+: the run completes,
    ε is accounted as without it, and the report names the trust model."""
    from fedseqrec.simulation.engine import simulate

    cfg = TINY.replace(
        rounds=2, mechanism="user-level", users_per_round=30, noise_multiplier=1.0, noise_shares="clients"
    )
    results, _ = simulate(cfg.replace(secure_aggregation=True), out=tmp_path / "secure")
    plain, _ = simulate(cfg, out=tmp_path / "plain")
    assert 0 < results["privacy"]["max_epsilon"] == pytest.approx(plain["privacy"]["max_epsilon"])
    report = json.loads((tmp_path / "secure" / "privacy.json").read_text())
    assert report["trust"].startswith("noise shares under secure aggregation (SecAgg+)")
    assert "does not use --secure-aggregation" in json.loads((tmp_path / "plain" / "privacy.json").read_text())["trust"]
    rounds = [json.loads(line) for line in (tmp_path / "secure" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["secure"]["secagg_clients"] == 3 for r in rounds)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"strategy": "fedmedian"}, "--strategy fedmedian"),
        ({"mechanism": "dp-fedavg", "central_noise": 1.0, "clients_per_round": 3}, "--privacy dp-fedavg"),
        ({"max_update_norm": 5.0}, "--max-update-norm"),
        ({"client_pool": 3}, "--client-pool"),
        ({"clients_per_round": 2}, "at least 3 clients a round"),
        ({"secagg_shares": 5}, "--secagg-shares 5 is more than the 3 clients"),
    ],
)
def test_secure_aggregation_refuses_what_it_cannot_combine_with(options, message):
    with pytest.raises(UserError, match=message):
        TINY.replace(secure_aggregation=True, **options).validate()


def test_quantisation_moves_neighbouring_sums_apart_by_at_most_one_step_per_changed_value():
    """What the release's sensitivity under SecAgg+ rests on (``privacy.quantised_sum``): Flower's quantisation
    rounds a value that does not change to the same level, and one that does to within one step of its change."""
    rng = np.random.default_rng(0)
    clipping_range, levels, size = 4.0, 2**10, 5000
    step = 2 * clipping_range / levels
    silo = rng.uniform(0, 3, size)
    user = np.zeros(size)
    touched = rng.choice(size, 40, replace=False)
    user[touched] = rng.normal(0, 1, 40)
    user /= np.linalg.norm(user)  # one user's clipped vector: norm 1
    for seed in range(5):
        quantised = []
        for vector in (silo, silo + user):
            np.random.seed(seed)  # the same draws decide the rounding in both worlds
            quantised.append(dequantize(quantize([vector], clipping_range, levels), clipping_range, levels)[0])
        moved = quantised[1] - quantised[0]
        untouched = np.setdiff1d(np.arange(size), touched)
        assert np.all(moved[untouched] == 0) and np.all(np.abs(moved[touched] - user[touched]) < step + 1e-12)
        assert np.linalg.norm(moved) <= quantised_sensitivity(1.0, size, clipping_range, levels)
    assert rounding_bound(4, 1.0, 4) == 1.0  # √4 values × a step of 2 · 1 / 4
    assert most_levels(10) == 2**28 and 10 * 2**28 < 2**32 and most_levels(16) == 2**27 and most_levels(1) == 2**30


def test_server_noise_on_a_quantised_sum_is_scaled_to_its_sensitivity():
    """--noise-shares server under SecAgg+: the server noises a quantised sum, so its noise is z·(C + the
    rounding's bound); with noise shares the silos' noise is the accounted z·C, and the report says what is not
    covered."""
    facts = RunFacts(None, 3, "iid", print, users=1000, horizon=4, secure=True, secure_rounding=0.25)
    for shares, expected in (("server", 1.25), ("clients", 1.0)):
        cfg = TINY.replace(mechanism="user-level", users_per_round=30, noise_multiplier=2.0, noise_shares=shares)
        mechanism = make_mechanism(cfg.privacy, facts)
        assert mechanism.noise_std == pytest.approx(2.0 * expected * cfg.privacy.max_grad_norm)
        mechanism.start(3, None, 0)
        trust = json.loads(mechanism.state())["trust"]
        assert ("sensitivity once quantised" in trust) == (shares == "server")
        assert ("Not accounted" in trust) == (shares == "clients")
