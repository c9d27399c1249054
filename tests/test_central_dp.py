"""User-level central DP (DP-FedAvg): the fixed-denominator aggregate, the noise, Poisson client sampling, the
accounting against an independent accountant, and whole runs with server- and client-side clipping."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import TINY, TINY_FLAGS, Nodes, independent_epsilons

from fedseqrec.privacy.dp_fedavg import CentralAccountant, FixedDenominatorFedAvg, central_dp_strategy, poisson_clients
from fedseqrec.simulation.engine import simulate

CENTRAL = TINY.replace(
    partition="per-user",
    clients=None,
    clients_per_round=10,
    rounds=3,
    mechanism="dp-fedavg",
    central_noise=1.0,
    clipping_norm=0.5,
)


def _reply(values, partition):
    metrics = MetricRecord({"num-examples": 1, "partition-id": partition})
    arrays = ArrayRecord({"w": torch.tensor(values, dtype=torch.float64)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=1, message_type="train")


def test_updates_are_summed_and_divided_by_the_expected_number_of_clients():
    strategy = FixedDenominatorFedAvg(expected_clients=4, min_available_nodes=0, min_train_nodes=0)
    strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2, dtype=torch.float64)}), ConfigRecord({}), Nodes([]))
    arrays, _ = strategy.aggregate_train(1, [_reply([1.0, 0.0], 0), _reply([0.0, 2.0], 1)])
    assert np.allclose(arrays["w"].numpy(), [0.25, 0.5])  # (sum of updates) / 4, not / 2


def test_server_side_clipping_and_noise_have_the_analysed_scale():
    np.random.seed(0)
    inner = FixedDenominatorFedAvg(expected_clients=4, min_available_nodes=0, min_train_nodes=0)
    strategy = central_dp_strategy(
        "fixed", "server", inner, noise=1.0, clipping_norm=0.5, expected=4, target_quantile=0.5, clip_lr=0.2
    )
    zero = ArrayRecord({"w": torch.zeros(200_000, dtype=torch.float64)})
    strategy.configure_train(1, zero, ConfigRecord({}), Nodes([]))
    big = np.zeros(200_000)
    big[0] = 100.0  # clipped to norm 0.5
    arrays, _ = strategy.aggregate_train(1, [_reply(big, 0)])
    out = arrays["w"].numpy()
    assert out[0] == pytest.approx(0.5 / 4, abs=4 * 0.125)
    assert np.std(out[1:]) == pytest.approx(1.0 * 0.5 / 4, rel=0.02)  # z * C / m


def test_poisson_client_sampling_is_unpredictable_and_has_the_right_rate():
    clients = list(range(500))
    seeded = poisson_clients(clients, 0.04, np.random.default_rng(3))
    assert seeded == poisson_clients(list(reversed(clients)), 0.04, np.random.default_rng(3))
    samples = [poisson_clients(clients, 0.04) for _ in range(300)]  # the default: OS randomness
    assert len({tuple(s) for s in samples}) == 300
    sizes = [len(s) for s in samples]
    assert np.mean(sizes) == pytest.approx(20, rel=0.05) and len(set(sizes)) > 5  # variable, mean qN


@pytest.mark.parametrize(("noise", "rate", "rounds"), [(1.0, 0.02, 100), (0.8, 0.1, 30), (2.0, 0.5, 50)])
def test_central_epsilon_agrees_with_an_independent_accountant(noise, rate, rounds):
    accountant = CentralAccountant(noise, rate, 1e-5, "rdp")
    for _ in range(rounds):
        accountant.add_round()
    rdp, pld = independent_epsilons([(noise, rate, rounds)], 1e-5)
    assert accountant.epsilon() == pytest.approx(rdp, rel=0.01)
    assert accountant.epsilon() >= pld * 0.99
    prv = CentralAccountant(noise, rate, 1e-5, "prv")
    prv.rounds = rounds
    assert prv.epsilon() == pytest.approx(pld, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "side", "noise"), [("fixed", "server", 1.0), ("adaptive", "client", 0.8)])
def test_dp_fedavg_run_with_one_client_per_user(tmp_path, kind, side, noise):
    cfg = CENTRAL.replace(central_norm=kind, central_clipping=side, central_noise=noise, rounds=2)
    results, folder = simulate(cfg, out=tmp_path / "run")
    report = json.loads((folder.path / "privacy_report.json").read_text())
    users = 120
    assert len(report["clients"]) == users and report["mechanism"].startswith("DP-FedAvg")
    assert "Poisson" in report["client_sampling"] and report["privacy_unit"].startswith("user-level")
    expected = CentralAccountant(noise, 10 / users, min(1e-5, 0.1 / users), "rdp")
    expected.rounds = 2
    assert report["max_epsilon"] == pytest.approx(expected.epsilon(), rel=1e-9)
    rdp, _ = independent_epsilons([(noise, 10 / users, 2)], report["delta"])
    assert report["max_epsilon"] == pytest.approx(rdp, rel=0.01)
    rounds = [json.loads(x) for x in (folder.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0]["epsilon_max"] < rounds[1]["epsilon_max"]
    assert results["privacy"]["max_epsilon"] == pytest.approx(report["max_epsilon"])


@pytest.mark.slow
def test_central_budget_stops_the_run_cleanly(tmp_path):
    accountant = CentralAccountant(1.0, 10 / 120, 1e-5, "rdp")
    budget = (accountant.epsilon(2) + accountant.epsilon(3)) / 2
    results, folder = simulate(CENTRAL.replace(rounds=5, budget=budget), out=tmp_path / "run")
    assert results["rounds_run"] == 2 and "privacy budget exhausted" in results["stopped"]
    assert results["privacy"]["max_epsilon"] <= budget


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--privacy", "dp-fedavg"], "needs --central-noise"),
        (["--privacy", "dp-fedavg", "--central-noise", "1"], "needs --clients-per-round"),
        (["--privacy", "dp-fedavg", "--central-noise", "-1", "--clients-per-round", "2"], "positive noise multiplier"),
        (
            ["--privacy", "dp-fedavg", "--central-noise", "1", "--clients-per-round", "2", "--epsilon", "3"],
            "--epsilon is not an option of --privacy dp-fedavg",
        ),
        (
            [
                "--privacy",
                "dp-fedavg",
                "--central-norm",
                "adaptive",
                "--central-noise",
                "1",
                "--clients-per-round",
                "2",
            ],
            "too large for adaptive",
        ),
        (["--central-noise", "1"], "--central-noise needs --privacy dp-fedavg"),
    ],
)
def test_bad_central_dp_options(cli, tmp_path, flags, message):
    result = cli("simulate", *TINY_FLAGS, *flags, "--out", tmp_path / "run")
    assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()
