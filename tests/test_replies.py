"""Replies that cannot crash or fool the federation: every field the server reads is checked first, a bad reply is
refused with its reason and the round goes on (issue 29's probes)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from faults import client_app_with, forgetful_ledger, quiet_ledger, timeless
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import TINY

from fedseqrec.federated.config import RunConfig
from fedseqrec.privacy.ledger import ledger_problem
from fedseqrec.results.privacy_report import build_privacy_report
from fedseqrec.server.replies import metrics_problem

GOOD = {"num-examples": 40, "partition-id": 0, "train-loss": 1.5, "steps": 3, "seconds": 0.4}


def _reply(metrics: dict, arrays: bool = True, status: str | None = None) -> Message:
    content = {"metrics": MetricRecord(metrics)}
    if arrays:
        content["arrays"] = ArrayRecord({"w": torch.zeros(2)})
    if status is not None:
        content["status"] = ConfigRecord({"reason": status})
    return Message(RecordDict(content), dst_node_id=1, message_type="train")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seconds": None}, "seconds missing"),
        ({"seconds": [1.0, 2.0]}, "seconds [1.0, 2.0] is not a finite number"),
        ({"seconds": -1.0}, "seconds -1.0 is out of range"),
        ({"train-loss": None}, "train-loss missing"),
        ({"train-loss": math.inf}, "train-loss inf is not a finite number"),
        ({"train-loss": 1e308}, "train-loss 1e+308 is out of range"),
        ({"steps": 2.5}, "steps 2.5 is not a whole number"),
        ({"declined": 2}, "declined 2 is neither 0 nor 1"),
        ({"declined": 1}, "declined, yet sends arrays"),
        ({"num-examples": -3}, "num-examples -3"),
        ({"partition-id": 4}, "partition-id 4 is not the client's (0)"),
    ],
)
def test_a_malformed_reply_is_named_not_read(change, expected):
    metrics = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert expected in metrics_problem(_reply(metrics), 0)


def test_a_reply_that_declines_without_arrays_is_well_formed():
    assert metrics_problem(_reply({"num-examples": 0, "partition-id": 0, "declined": 1}, arrays=False), 0) is None
    assert metrics_problem(_reply(GOOD), 0) is None


LEDGER = {
    **GOOD, "epsilon": 2.5, "delta": 1e-5, "budget": -1.0, "ledger-round": [1, 2], "ledger-noise": [1.0, 1.0],
    "ledger-rate": [0.25, 0.25], "ledger-steps": [4, 4],
}  # fmt: skip # a ledger reply, field by field


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ledger-round": [], "ledger-noise": [], "ledger-rate": [], "ledger-steps": [], "epsilon": 0.0},
         "trained in round 2 but holds no record of it"),
        ({"ledger-round": [1], "ledger-noise": [1.0], "ledger-rate": [0.25], "ledger-steps": [4]},
         "trained in round 2 but holds no record of it"),
        ({"ledger-steps": [4]}, "differ in length"),
        ({"ledger-steps": None}, "must each be a list"),
        ({"epsilon": math.nan}, "epsilon nan is not a finite number"),
        ({"epsilon": -1.0}, "epsilon -1.0 is out of range"),
        ({"delta": 0.9}, "delta 0.9 is out of range"),
        ({"delta": math.inf}, "delta inf is not a finite number"),
        ({"budget": None}, "budget missing"),
        ({"ledger-noise": [1.0, 0.0]}, "record 2: noise 0.0 is out of range"),
        ({"ledger-rate": [0.25, 2.0]}, "record 2: rate 2.0 is out of range"),
        ({"ledger-steps": [4, 1.5]}, "record 2: steps 1.5 is not a whole number"),
        ({"ledger-round": [2, 1]}, "record 2: round 1 is out of range"),
        ({"ledger-round": [1, 3]}, "record 2: round 3 is out of range"),
    ],
)  # fmt: skip # one probe a line
def test_a_ledger_that_cannot_be_read_or_hides_this_round_is_refused(change, expected):
    metrics = {k: v for k, v in {**LEDGER, **change}.items() if v is not None}
    assert expected in ledger_problem(metrics, 2, 1e-5)
    assert ledger_problem(LEDGER, 2, 1e-5) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", [forgetful_ledger, quiet_ledger, timeless], ids=["empty ledger, epsilon 0", "sigma 1e9", "no seconds"]
)
def test_a_client_sending_bad_figures_is_refused_and_the_run_goes_on(tmp_path, fault):
    from fedseqrec.simulation.engine import simulate

    cfg = TINY.replace(rounds=2, mechanism="dp-sgd", noise_multiplier=1.0, out=str(tmp_path / "run"))
    results, folder = simulate(cfg, client_app=client_app_with(fault))
    rounds = [json.loads(line) for line in (folder.path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["failed"] == ["client 0 (rejected)"] and r["clients"] == 2 for r in rounds)
    privacy = json.loads((folder.path / "privacy.json").read_text())
    # Client 0 still sent updates trained on its users: the server's plan of its rounds is its record.
    refused = privacy["clients"]["0"]
    assert [r["round"] for r in refused["ledger"]] == [1, 2] and refused["epsilon_checked"] > 0
    assert refused["epsilon_checked"] == pytest.approx(privacy["clients"]["1"]["epsilon_checked"], rel=0.05)
    assert [r["round"] for r in refused["refusals"]] == [1, 2] and results["privacy"]["max_epsilon"] > 0
    report = build_privacy_report(folder.path)
    assert report["clients"][0]["epsilon"] == pytest.approx(refused["epsilon_checked"])
    assert any(flag.startswith("client 0: its round-2 reply was refused") for flag in report["flags"])


def _dpsgd_server(**options):
    """The server half of DP-SGD for a run of ``options``, with 4 rounds planned, batch 16, one local epoch."""
    from fedseqrec.federated.mechanisms import make_mechanism
    from fedseqrec.privacy.mechanism import RunFacts

    cfg = RunConfig.of(mechanism="dp-sgd", rounds=4, **options).planned()
    facts = RunFacts(None, 1, "iid", print, users=1000, horizon=cfg.planned_horizon(), batch_size=16)
    return make_mechanism(cfg.privacy, facts)


def _honest(server, server_round: int = 1, examples: int = 40, delta: float = 1e-5) -> dict:
    plan = server.planned(server_round, examples, delta)
    return {
        **GOOD, "num-examples": examples, "epsilon": 1.0, "delta": delta, "budget": -1.0,
        "ledger-round": [server_round], "ledger-noise": [plan.noise_multiplier], "ledger-rate": [plan.sample_rate],
        "ledger-steps": [plan.steps],
    }  # fmt: skip # a ledger reply, field by field


@pytest.mark.parametrize("options", [{"noise_multiplier": 1.1}, {"epsilon": 3.0}], ids=["sigma", "epsilon target"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ledger-noise": [1e9]}, "is not the server's plan for 40 training users"),
        ({"ledger-steps": [0]}, "is not the server's plan"),
        ({"ledger-rate": [0.01]}, "is not the server's plan"),
        ({"delta": 0.9}, "delta 0.9 is out of range"),
    ],
)  # fmt: skip # one probe a line
def test_a_ledger_that_is_not_the_servers_plan_is_refused(options, change, expected):
    server = _dpsgd_server(**options)
    honest = _honest(server)
    assert server.reply_problem(1, honest) is None
    assert expected in server.reply_problem(1, {**honest, **change})


def test_a_smaller_delta_than_planned_is_the_plan_only_for_a_fixed_sigma():
    """Under an ε target a smaller δ calibrates more noise than the client added; a fixed σ is the same at any δ
    (its ε is then reported at the smaller δ)."""
    target = _dpsgd_server(epsilon=3.0)
    assert "is not the server's plan" in target.reply_problem(1, {**_honest(target), "delta": 5e-6})
    fixed = _dpsgd_server(noise_multiplier=1.1)
    assert fixed.reply_problem(1, {**_honest(fixed), "delta": 5e-6}) is None
    big = _honest(fixed, examples=20_000, delta=5e-6)  # the default δ of 20,000 users is 0.1 / 20,000
    assert fixed.reply_problem(1, big) is None
    assert "δ 8e-06 is above 5e-06" in fixed.reply_problem(1, {**big, "delta": 8e-6})


def test_the_run_delta_is_required_and_a_held_record_cannot_change():
    server = _dpsgd_server(noise_multiplier=1.1, delta=1e-6)
    assert "not the run's --delta 1e-06" in server.reply_problem(1, _honest(server, delta=1e-7))
    server.observe(1, [_reply(_honest(server, delta=1e-6))])
    second = _honest(server, 2, delta=1e-6)
    assert "changed the record of round 1" in server.reply_problem(2, second)  # it left round 1 out
    first = server.clients["0"]["ledger"][0]
    ledger = {
        "ledger-round": [1, 2], "ledger-noise": [first["noise_multiplier"] * 10, second["ledger-noise"][0]],
        "ledger-rate": [first["sample_rate"], second["ledger-rate"][0]], "ledger-steps": [first["steps"], 3],
    }  # fmt: skip # field by field
    assert "changed the record of round 1" in server.reply_problem(2, {**second, **ledger})


def test_a_refused_update_is_accounted_from_the_plan_or_the_costlier_claim():
    server = _dpsgd_server(noise_multiplier=1.1)
    honest = _honest(server)
    lying = {**honest, "ledger-noise": [1e9], "ledger-steps": [50]}
    server.account_refused(1, 0, _reply(lying), "not the plan")
    record = server.clients["0"]["ledger"][0]
    plan = server.planned(1, 40, 1e-5)
    assert record["noise_multiplier"] == plan.noise_multiplier and record["steps"] == 50
    assert server.clients["0"]["refusals"] == [{"round": 1, "reason": "not the plan"}]
    assert server.clients["0"]["epsilon_checked"] > 0
    server.account_refused(1, 1, _reply(lying, arrays=False), "declined")  # nothing released: nothing spent
    assert "1" not in server.clients


def test_a_reply_that_trained_and_sends_no_update_is_named():
    """(issue 29: such a reply vanished from the round without a line)"""
    from fedseqrec.server.replies import ReplyRules, update_problem

    current = ArrayRecord({"w": torch.ones(2)})
    rules = ReplyRules.for_arrays(current)
    problem = update_problem(_reply(GOOD, arrays=False), rules, current)
    assert problem == "no update, though it trained on 40 examples and did not decline"
    declined = {"num-examples": 0, "partition-id": 0, "declined": 1}
    assert update_problem(_reply(declined, arrays=False), rules, current) is None


def test_a_huge_update_is_refused_by_default_relative_to_the_model():
    from fedseqrec.server.replies import ReplyRules, update_problem

    current = ArrayRecord({"w": torch.ones(4)})
    rules = ReplyRules.for_arrays(current, max_update_ratio=RunConfig().algorithm.max_update_ratio)

    def reply(values):
        return Message(
            RecordDict({"metrics": MetricRecord(GOOD), "arrays": ArrayRecord({"w": torch.tensor(values)})}),
            dst_node_id=1,
            message_type="train",
        )

    assert update_problem(reply([1.1, 0.9, 1.2, 1.0]), rules, current) is None  # an honest step
    problem = update_problem(reply([1e30, 1.0, 1.0, 1.0]), rules, current)
    assert "over 100 times the global model's" in problem and "--max-update-ratio" in problem
    unbounded = ReplyRules.for_arrays(current, max_update_ratio=0.0)
    assert update_problem(reply([1e30, 1.0, 1.0, 1.0]), unbounded, current) is None


@pytest.mark.slow
def test_a_round_short_of_updates_by_rejections_does_not_send_the_user_to_resume(cli, tmp_path):
    """(issue 29: after a ×1e30 update the message said to resume, and a resumed run failed the same way forever)"""
    from helpers import TINY_FLAGS

    out = tmp_path / "run"
    attack = ["--attack", "scale", "--attack-scale", "1e30", "--attack-fraction", "0.34", "--min-clients", "3"]
    result = cli("simulate", *TINY_FLAGS, "--rounds", "2", *attack, "--out", out)
    assert result.code == 1, result.err
    assert "over 100 times the global model's" in result.out + result.err
    assert "reject them again" in result.err and "start a new run with a lower --min-clients" in result.err
    assert "continue with --resume" not in result.err
