"""Broken and hostile training replies: each is rejected with its reason before aggregation, the round goes on
with the others, metrics files stay valid JSON; Flower's robust strategies are offered and survive a scaled
update that wrecks FedAvg."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from helpers import TINY

from fedseqrec.client.client_app import make_client_app
from fedseqrec.errors import UserError
from fedseqrec.federated.config import robust_minimum
from fedseqrec.federated.task import build_global_model, cached_dataset
from fedseqrec.jsonio import dumps
from fedseqrec.server.loop import Progress
from fedseqrec.server.replies import ReplyRules, metrics_problem, update_problem
from fedseqrec.server.strategies import build_strategy
from fedseqrec.simulation.attacks import AttackConfig, attacked
from fedseqrec.simulation.engine import simulate

GLOBAL = ArrayRecord({"item.weight": torch.zeros(5, 4), "bias": torch.zeros(4), "steps": torch.zeros(1).long()})


def _reply(arrays: dict | None = None, partition: int = 1, **metrics) -> Message:
    values = {"num-examples": 10, "partition-id": partition, "train-loss": 0.5, "seconds": 0.1, **metrics}
    content = {"metrics": MetricRecord({k: v for k, v in values.items() if v is not None})}
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(RecordDict(content), dst_node_id=1, message_type="train")


def _good(**change) -> dict:
    arrays = {"item.weight": torch.full((5, 4), 0.1), "bias": torch.zeros(4), "steps": torch.ones(1).long()}
    return {**arrays, **change}


RULES = ReplyRules.for_arrays(GLOBAL, max_examples=1000)


def test_a_well_formed_reply_passes():
    reply = _reply(_good())
    assert metrics_problem(reply, 1) is None and update_problem(reply, RULES, GLOBAL) is None


def test_a_declining_client_without_arrays_passes():
    reply = _reply(None, **{"num-examples": 0})
    assert metrics_problem(reply, 1) is None and update_problem(reply, RULES, GLOBAL) is None


@pytest.mark.parametrize(
    "metrics, reason",
    [
        ({"partition-id": None}, "partition-id None is not the client's (1)"),
        ({"partition-id": 2}, "partition-id 2 is not the client's (1)"),
        ({"num-examples": -1}, "num-examples -1 is not a non-negative whole number"),
        ({"num-examples": 2.5}, "num-examples 2.5"),
        ({"train-loss": float("nan")}, "train-loss nan is not a finite number"),
    ],
)
def test_bad_metrics_are_named(metrics, reason):
    assert reason in metrics_problem(_reply(_good(), **metrics), 1)


@pytest.mark.parametrize(
    "arrays, reason",
    [
        (_good(bias=torch.tensor([0.0, float("nan"), 0.0, 0.0])), "bias: 1 non-finite values"),
        (_good(bias=torch.full((4,), float("inf"))), "bias: 4 non-finite values"),
        (_good(**{"item.weight": torch.zeros(1, 4)}), "item.weight: shape (1, 4), expected (5, 4)"),
        (_good(**{"item.weight": torch.zeros(6, 4)}), "item.weight: shape (6, 4), expected (5, 4)"),
        (_good(bias=torch.zeros(4, dtype=torch.float64)), "bias: dtype float64, expected float32"),
        ({k: v for k, v in _good().items() if k != "bias"}, "missing bias"),
        (_good(extra=torch.zeros(2)), "unexpected extra"),
    ],
)
def test_malformed_arrays_are_rejected_with_the_reason(arrays, reason):
    reply = _reply(arrays)
    assert metrics_problem(reply, 1) is None
    assert reason in update_problem(reply, RULES, GLOBAL)


def test_an_inflated_example_count_is_refused():
    reply = _reply(_good(), **{"num-examples": 1e9})
    assert "num-examples 1000000000 exceeds the 1000 users" in update_problem(reply, RULES, GLOBAL)


def test_the_update_norm_bound_measures_against_the_weights_sent():
    bounded = ReplyRules.for_arrays(GLOBAL, max_update_norm=1.0)
    assert update_problem(_reply(_good()), bounded, GLOBAL) is None  # ‖0.1 · 1‖ over 20 values = 0.447
    scaled = _reply(_good(**{"item.weight": torch.full((5, 4), 1e30)}))
    assert "update norm 4.472e+30 exceeds --max-update-norm 1" in update_problem(scaled, bounded, GLOBAL)
    # user-level DP: the reply is the update itself (a gradient sum), not weights
    sums = ReplyRules.for_arrays(GLOBAL, ["bias"], weights=False, max_update_norm=1.0)
    assert update_problem(_reply({"bias": torch.full((4,), 0.6)}), sums, GLOBAL) == (
        "update norm 1.2 exceeds --max-update-norm 1"
    )


def test_json_never_holds_nan():
    text = dumps({"loss": float("nan"), "valid": [1.0, float("inf")]})
    assert json.loads(text) == {"loss": None, "valid": [1.0, None]}


# --- robust strategies --------------------------------------------------------------------------------------------


def _weights(value: float, partition: int) -> Message:
    return _reply({"w": torch.full((3,), value)}, partition=partition)


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_robust_strategies_ignore_one_scaled_update(strategy):
    cfg = TINY.replace(strategy=strategy, byzantine_clients=1, trim_beta=0.2).algorithm
    replies = [_weights(v, p) for p, v in enumerate([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98])]
    replies.append(_weights(100.0, 7))  # ×100
    arrays, _ = build_strategy(cfg, 0.01).aggregate_train(1, replies)
    assert np.all(np.abs(arrays["w"].numpy() - 1.0) < 0.1)
    plain, _ = build_strategy(TINY.algorithm, 0.01).aggregate_train(1, [_weights(v, 0) for v in (1.0, 100.0)])
    assert plain["w"].numpy()[0] > 50  # FedAvg is dragged along


def test_multikrum_keeps_all_but_the_tolerated_malicious_by_default():
    cfg = TINY.replace(strategy="multikrum", byzantine_clients=1).algorithm
    replies = [_weights(v, p) for p, v in enumerate([1.0, 2.0, 3.0, 4.0, 50.0])]
    arrays, _ = build_strategy(cfg, 0.01).aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 2.5)  # the four nearest kept, 50 dropped


def test_robust_minimums():
    assert robust_minimum("krum", 1) == 5 and robust_minimum("bulyan", 1) == 7 and robust_minimum("fedmedian", 3) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"strategy": "bulyan", "byzantine_clients": 1}, "needs at least 7 clients a round, the run has 3"),
        ({"strategy": "fedmedian", "mechanism": "user-level"}, "does not combine with --privacy user-level"),
        ({"strategy": "fedtrimmedavg", "trim_beta": 0.5}, "trim-beta"),
    ],
)
def test_robust_options_refused(flags, message):
    with pytest.raises(UserError, match=message):
        TINY.replace(**flags).validate()


# --- whole runs ---------------------------------------------------------------------------------------------------


def corrupt(partition: int, how: str):
    """A client mod that corrupts one client's training reply, as a broken or hostile client would."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or int(context.node_config["partition-id"]) != partition:
            return reply
        state = reply.content["arrays"].to_torch_state_dict()
        if how == "nan":
            state["scorer.weight"][0, 0] = float("nan")
        elif how == "scale":
            state = {k: v * 100 if v.is_floating_point() else v for k, v in state.items()}
        elif how == "missing-partition":
            del reply.content["metrics"]["partition-id"]
        reply.content["arrays"] = ArrayRecord(state)
        return reply

    return mod


@pytest.mark.slow
def test_a_nan_reply_is_rejected_and_the_run_stays_finite(tmp_path):
    messages = []
    out = tmp_path / "run"
    results, _ = simulate(
        TINY.replace(rounds=2),
        out=out,
        client_app=make_client_app(mods=[corrupt(1, "nan")]),
        progress=Progress(on_message=messages.append),
    )
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rounds] == [2, 2] and rounds[0]["failed"] == ["client 1 (rejected)"]
    assert any("client 1's update rejected: scorer.weight: 1 non-finite values" in m for m in messages)
    weights = torch.load(out / "model_last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert np.isfinite(results["test"]["NDCG@10"])


@pytest.mark.slow
def test_a_reply_without_its_partition_id_does_not_stop_the_run(tmp_path):
    messages = []
    simulate(
        TINY.replace(rounds=1),
        out=tmp_path / "run",
        client_app=make_client_app(mods=[corrupt(2, "missing-partition")]),
        progress=Progress(on_message=messages.append),
    )
    assert any("client 2" in m and "rejected: partition-id None" in m for m in messages)


@pytest.mark.slow
def test_the_median_survives_a_scaled_client_that_fedavg_does_not(tmp_path):
    attack = AttackConfig(attack="scale", attack_fraction=0.34, attack_scale=100.0)
    attacked = {}
    for strategy in ("fedavg", "fedmedian"):
        simulate(TINY.replace(rounds=1, strategy=strategy), out=tmp_path / strategy, attack=attack)
        attacked[strategy] = torch.load(tmp_path / strategy / "model_last.pt", weights_only=True)["scorer.weight"]
    assert json.loads((tmp_path / "fedavg" / "attack.json").read_text())["malicious_clients"] == attack.malicious(3, 0)
    simulate(TINY.replace(rounds=1), out=tmp_path / "clean")
    clean = torch.load(tmp_path / "clean" / "model_last.pt", weights_only=True)["scorer.weight"]
    torch.manual_seed(TINY.data.seed)  # the initial global model, as the server builds it
    start = build_global_model(cached_dataset(TINY.data).sequences, TINY.model).state_dict()["scorer.weight"]
    assert (attacked["fedavg"] - clean).norm() > 10 * (clean - start).norm()  # dragged ×100/3 along the update
    assert (attacked["fedmedian"] - clean).norm() < (clean - start).norm()


def test_malicious_clients_are_drawn_by_seed_and_their_updates_changed():
    attack = AttackConfig(attack="sign-flip", attack_fraction=0.2, attack_scale=2.0)
    assert attack.malicious(10, 0) == attack.malicious(10, 0) and len(attack.malicious(10, 0)) == 2
    assert attack.malicious(10, 0) != attack.malicious(10, 1) or attack.malicious(10, 2) != attack.malicious(10, 0)
    assert np.allclose(attacked(np.array([1.0, -2.0]), "sign-flip", 2.0), [-2.0, 4.0])
    assert np.allclose(attacked(np.array([1.0, -2.0]), "scale", 100.0), [100.0, -200.0])
    assert np.isnan(attacked(np.array([1.0, -2.0]), "nan", 1.0)).sum() == 1
    with pytest.raises(UserError, match="is no client"):
        AttackConfig(attack="scale", attack_fraction=0.01).malicious(10, 0)
