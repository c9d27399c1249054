"""Federated training: run config, client sampling, aggregation and evaluation arithmetic (in-process), and whole
simulated runs through Flower's simulation engine (end to end, resume, client failure)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import TINY, TINY_FLAGS, Nodes, client_context, message

from fedseqrec.client.client_app import make_client_app
from fedseqrec.errors import RunError, UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.pyproject import synced
from fedseqrec.federated.task import build_global_model, cached_dataset, load_client_data
from fedseqrec.models.optim import AdamW, optimizer_moments, restore_moments
from fedseqrec.server.directory import choose_clients
from fedseqrec.server.evaluation import combine_evaluations
from fedseqrec.server.loop import Progress
from fedseqrec.server.strategies import build_strategy
from fedseqrec.simulation.engine import simulate

REPO = Path(__file__).resolve().parents[1]


# --- run config ---------------------------------------------------------------------------------------------------


def test_pyproject_run_config_mirrors_the_dataclass():
    text = (REPO / "pyproject.toml").read_text()
    assert synced(text) == text, "run `python -m fedseqrec.federated.pyproject` after changing an option"
    project = tomllib.loads(text)
    app = project["tool"]["flwr"]["app"]
    assert app["config"] == RunConfig().to_run_config()
    assert app["components"] == {
        "serverapp": "fedseqrec.server.server_app:app",
        "clientapp": "fedseqrec.client.client_app:app",
    }
    assert "federations" not in project["tool"]["flwr"]
    name = project["project"]["name"]
    assert name.replace("-", "").isalnum()  # `flwr build` accepts letters, digits and hyphens only


def test_run_config_round_trip_and_refusals():
    cfg = TINY.replace(clients_per_round=2, round_timeout=30.0)
    assert RunConfig.from_run_config(cfg.to_run_config()) == cfg
    assert RunConfig.from_run_config({"lr": "0.01", "side-info": "false"}).fit.lr == 0.01
    with pytest.raises(UserError, match="unknown run-config keys: learning-rate"):
        RunConfig.from_run_config({"learning-rate": 0.1})
    with pytest.raises(UserError, match="rounds = 'many': expected int"):
        RunConfig.from_run_config({"rounds": "many"})
    for bad, refusal in [
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'"),
        ({"rounds": 0}, "--rounds must be a positive integer"),
        ({"clients-per-round": 5}, "--clients-per-round 5 is more than --clients 3"),
        ({"server-momentum": 1.5}, "--server-momentum must be in"),
        ({"lr": -1.0}, "--lr must be a positive number"),
        ({"fraction-evaluate": 0.0}, "--fraction-evaluate must be in"),
        ({"window": "prefixes", "privacy": "user-level", "epsilon": 8.0}, "DP clips per example"),
    ]:
        with pytest.raises(UserError, match=refusal):
            RunConfig.from_run_config({**TINY.to_run_config(), **bad}).validate()


def test_client_sampling_is_deterministic_by_seed_and_round():
    clients = list(range(50))
    first = choose_clients(clients, 10, seed=0, server_round=3)
    assert first == choose_clients(list(reversed(clients)), 10, seed=0, server_round=3)
    assert len(set(first)) == 10 and set(first) <= set(clients)
    assert first != choose_clients(clients, 10, seed=0, server_round=4)
    assert first != choose_clients(clients, 10, seed=1, server_round=3)
    assert choose_clients(clients, None, 0, 1) == clients
    # over many rounds every client is drawn about equally often
    counts = np.bincount(np.concatenate([choose_clients(clients, 10, 0, r) for r in range(1, 501)]), minlength=50)
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each


# --- aggregation and evaluation arithmetic -----------------------------------------------------------------------


def _reply(arrays: dict[str, np.ndarray], examples: int, partition: int) -> Message:
    metrics = MetricRecord({"num-examples": examples, "partition-id": partition, "train-loss": 1.0, "seconds": 0.1})
    record = ArrayRecord({k: torch.tensor(v) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": record, "metrics": metrics}), dst_node_id=1, message_type="train")


def test_fedavg_weights_by_number_of_examples():
    strategy = build_strategy(TINY.algorithm, TINY.fit.lr)
    replies = [
        _reply({"w": np.array([1.0, 0.0]), "b": np.array([2.0])}, examples=1, partition=0),
        _reply({"w": np.array([0.0, 4.0]), "b": np.array([6.0])}, examples=3, partition=1),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), [0.25, 3.0])  # (1*1 + 3*0) / 4, (1*0 + 3*4) / 4
    assert np.allclose(arrays["b"].numpy(), [5.0])


def test_item_weighted_averages_item_rows_by_the_clients_item_counts():
    """--item-weighted: row i of an item table over the clients weighted by their counts of item i (a row no client
    holds: the plain mean), every other array by num-examples; bad counts weigh nothing."""
    cfg = TINY.replace(item_weighted=True)
    strategy = build_strategy(cfg.algorithm, cfg.fit.lr, item_keys=["emb"])
    a = _reply({"emb": np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), "b": np.array([2.0])}, examples=1, partition=0)
    b = _reply({"emb": np.array([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]), "b": np.array([6.0])}, examples=3, partition=1)
    a.content["metrics"]["item-counts"] = [0, 3, 0]
    b.content["metrics"]["item-counts"] = [0, 1, 4]
    arrays, _ = strategy.aggregate_train(1, [a, b])
    emb = arrays["emb"].numpy()
    assert np.allclose(emb[0], [3.0, 3.0])  # nobody holds it: (1 + 5) / 2
    assert np.allclose(emb[1], [3.0, 3.0], atol=1e-3)  # (3 * 2 + 1 * 6) / 4
    assert np.allclose(emb[2], [7.0, 7.0], atol=1e-3)  # only b holds it
    assert np.allclose(arrays["b"].numpy(), [5.0])  # by examples, as FedAvg
    b.content["metrics"]["item-counts"] = [0, -1, 4]  # hostile: ignored, b weighs as a client without the items
    arrays, _ = strategy.aggregate_train(1, [a, b])
    assert np.allclose(arrays["emb"].numpy()[2], [5.0, 5.0])  # the plain mean
    assert np.allclose(arrays["emb"].numpy()[1], [2.0, 2.0], atol=3e-3)  # a's row (and the 1e-3 floor of b)


def test_item_weighting_sits_beneath_a_server_optimiser():
    cfg = TINY.replace(item_weighted=True, strategy="fedavgm", server_lr=1.0, server_momentum=0.0)
    strategy = build_strategy(cfg.algorithm, cfg.fit.lr, item_keys=["emb"])
    current = ArrayRecord({"emb": torch.zeros(2, 1)})
    strategy.configure_train(1, current, ConfigRecord({}), Nodes([]))
    a = _reply({"emb": np.array([[2.0], [0.0]])}, examples=1, partition=0)
    b = _reply({"emb": np.array([[0.0], [4.0]])}, examples=1, partition=1)
    a.content["metrics"]["item-counts"] = [5, 0]
    b.content["metrics"]["item-counts"] = [0, 5]
    arrays, _ = strategy.aggregate_train(1, [a, b])
    assert np.allclose(arrays["emb"].numpy().ravel(), [2.0, 4.0], atol=1e-3)


def test_a_client_reports_its_item_counts_with_item_weighting():
    app = make_client_app()
    cfg = TINY.replace(item_weighted=True)
    ds = cached_dataset(TINY.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, TINY.model)
    reply = app(message("train", ArrayRecord(model.state_dict()), cfg), client_context(cfg, 2))
    data = load_client_data(TINY, 2, 3)
    expected = np.zeros(ds.sequences.n_items + 1, dtype=int)
    for user in data.users:
        for item in ds.sequences.sequence(int(user))[: ds.split.train_end[user]]:
            expected[item] += 1
    assert reply.content["metrics"]["item-counts"] == expected.tolist() and expected.sum() > 0
    assert model.item_table_keys() == ["item_embedding.weight", "scorer.weight", "scorer.bias"]


def test_fedadam_moves_from_the_current_weights_by_the_server_learning_rate():
    cfg = TINY.replace(strategy="fedadam", server_lr=0.1, tau=1e-9, beta_1=0.0, beta_2=0.0)
    strategy = build_strategy(cfg.algorithm, cfg.fit.lr)
    current = ArrayRecord({"w": torch.tensor([1.0, 1.0])})
    strategy.configure_train(1, current, ConfigRecord({}), Nodes([]))
    arrays, _ = strategy.aggregate_train(1, [_reply({"w": np.array([3.0, 0.0])}, 1, 0)])
    # beta = 0: the step is eta * delta / |delta| = eta * sign(delta)
    assert np.allclose(arrays["w"].numpy(), [1.1, 0.9])


def test_client_train_reply_in_process():
    app = make_client_app()
    ds = cached_dataset(TINY.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, TINY.model)
    before = ArrayRecord(model.state_dict())
    reply = app(message("train", before, TINY), client_context(TINY, 1))
    metrics = reply.content["metrics"]
    data = load_client_data(TINY, 1, 3)
    trainable = int((ds.split.train_end[data.users] >= 2).sum())
    assert metrics["num-examples"] == trainable > 0
    assert metrics["partition-id"] == 1 and metrics["steps"] == -(-trainable // TINY.fit.batch_size)
    after = reply.content["arrays"].to_torch_state_dict()
    assert list(after) == list(model.state_dict())  # same keys, same order (Flower's DP mods need the order)
    assert not torch.equal(after["scorer.weight"], model.state_dict()["scorer.weight"])


def test_kept_optimizer_state_continues_adamw_exactly():
    """Two steps of one AdamW = one step, the state kept by name, and a step of a fresh AdamW given that state."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(8, 4)

    def step(net, optimizer):
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        optimizer.step()

    one = AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    step(model, one)
    step(model, one)
    first = AdamW(twin.parameters(), lr=0.1, weight_decay=0.5)
    step(twin, first)
    kept = optimizer_moments(twin, first)
    assert set(kept) == {f"{n}:{k}" for n, _ in twin.named_parameters() for k in ("exp_avg", "exp_avg_sq", "step")}
    assert float(kept["0.weight:step"]) == 1
    second = AdamW(twin.parameters(), lr=0.1, weight_decay=0.5)
    restore_moments(twin, second, kept)
    step(twin, second)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    fresh = AdamW(twin.parameters(), lr=0.1, weight_decay=0.5)
    restore_moments(twin, fresh, {})  # nothing kept: starts afresh
    assert not fresh.state


def test_a_client_keeps_its_optimizer_state_between_rounds_by_partition():
    """--keep-optimizer: the node's context.state holds each client's AdamW state (a pooled node serves several
    clients, so it is kept per partition); the second round continues the moments instead of restarting them."""
    app = make_client_app()
    cfg = TINY.replace(keep_optimizer=True)
    ds = cached_dataset(TINY.data)
    torch.manual_seed(0)
    before = ArrayRecord(build_global_model(ds.sequences, TINY.model).state_dict())
    context = client_context(cfg, 0)
    pooled = {"partition-id": 1, "num-partitions": 3}
    first = app(message("train", before, cfg), context)
    app(message("train", before, cfg, **pooled), context)
    assert set(context.state) == {"optimizer-state:0", "optimizer-state:1"}
    steps = first.content["metrics"]["steps"]
    kept = context.state["optimizer-state:0"].to_torch_state_dict()
    assert float(kept["scorer.weight:step"][0]) == steps
    again = app(message("train", before, cfg, server_round=2), context)
    kept = context.state["optimizer-state:0"].to_torch_state_dict()
    assert float(kept["scorer.weight:step"][0]) == 2 * steps
    stateless = client_context(TINY, 0)
    fresh = app(message("train", before, TINY, server_round=2), stateless)
    assert not stateless.state  # without the option nothing is kept
    ours, theirs = (m.content["arrays"].to_torch_state_dict()["scorer.weight"] for m in (again, fresh))
    assert not torch.equal(ours, theirs)


def test_federated_evaluation_adds_sums_and_counts_not_averages():
    cfg = TINY.replace(partition="dirichlet", alpha=0.1)  # clients of very different sizes
    app = make_client_app()
    ds = cached_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, cfg.model)
    arrays = ArrayRecord(model.state_dict())
    replies = [app(message("evaluate", arrays, cfg, which="test"), client_context(cfg, p)) for p in range(3)]
    combined = combine_evaluations(replies)
    central = evaluate_sums(model, ds.sequences, ds.split, "test", max_len=cfg.model.max_len)
    assert combined.count == central.count == sum(r.content["metrics"]["num-examples"] for r in replies)
    for name, value in central.result().items():
        assert combined.result()[name] == pytest.approx(value, rel=1e-9)
    per_client = [
        r.content["metrics"]["sum:NDCG@10"] / r.content["metrics"]["num-examples"]
        for r in replies
        if r.content["metrics"]["num-examples"]
    ]
    sizes = sorted(r.content["metrics"]["num-examples"] for r in replies)
    assert sizes[0] != sizes[-1]
    assert np.mean(per_client) != pytest.approx(central.result()["NDCG@10"], rel=1e-6)


# --- whole simulated runs -----------------------------------------------------------------------------------------


def fail_in_round(partition: int, server_round: int):
    """A client mod that raises in one round at one client, as a crashing client would."""

    def mod(msg, context, call_next):
        config = msg.content.config_records.get("config")
        if (
            msg.metadata.message_type == "train"
            and int(context.node_config["partition-id"]) == partition
            and int(config["server-round"]) == server_round
        ):
            raise RuntimeError(f"injected failure at client {partition}")
        return call_next(msg, context)

    return mod


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """Three rounds, two of three clients a round."""
    out = tmp_path_factory.mktemp("runs") / "full"
    simulate(TINY.replace(clients_per_round=2), out=out)
    return out


@pytest.mark.slow
def test_simulated_run_writes_the_run_folder(full_run):
    names = {p.name for p in full_run.iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "metrics.json",
        "model.pt",
        "model_last.pt",
        "model.json",
        "summary.md",
    } <= names
    rounds = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert record["clients"] == 2 and record["failed"] == []
        assert record["loss"] > 0 and record["seconds"] > 0 and 0 <= record["valid"]["NDCG@10"] <= 1
    results = json.loads((full_run / "metrics.json").read_text())
    assert set(results["test"]) == set(results["valid"]) >= {"NDCG@10", "HR@10", "MRR@10"}
    assert results["rounds_run"] == 3 and 1 <= results["best_round"] <= 3
    best = max(rounds, key=lambda r: r["valid"]["NDCG@10"])
    assert results["valid"]["NDCG@10"] == pytest.approx(best["valid"]["NDCG@10"])
    config = json.loads((full_run / "config.json").read_text())["run_config"]
    assert RunConfig.from_run_config(config).algorithm.clients_per_round == 2
    assert "| round |" in (full_run / "summary.md").read_text()
    ds = cached_dataset(TINY.data)
    build_global_model(ds.sequences, TINY.model, torch.load(full_run / "model_last.pt", weights_only=True))


@pytest.mark.slow
def test_resumed_run_reaches_the_same_weights(full_run, tmp_path, cli):
    out = tmp_path / "resumed"
    simulate(TINY.replace(clients_per_round=2, rounds=2), out=out)
    assert not torch.equal(*_scorers(out, full_run))
    result = cli("simulate", "--resume", out, "--rounds", "3")
    assert result.code == 0, result.err
    assert "resuming" in result.out and "round   3/3" in result.out
    assert torch.equal(*_scorers(out, full_run))
    last = torch.load(out / "model_last.pt", weights_only=True)
    reference = torch.load(full_run / "model_last.pt", weights_only=True)
    assert all(torch.equal(last[k], reference[k]) for k in reference)
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_kept_optimizer_state_survives_rounds_in_the_simulation(full_run, tmp_path):
    """Through Flower's simulation engine: round 1 is the plain run's (nothing kept yet); from round 2 the clients
    that trained before continue their moments, so the round's loss differs."""
    out = tmp_path / "kept"
    simulate(TINY.replace(clients_per_round=2, rounds=2, keep_optimizer=True), out=out)
    kept, plain = ([json.loads(x) for x in (f / "metrics.jsonl").read_text().splitlines()] for f in (out, full_run))
    assert kept[0]["loss"] == plain[0]["loss"]
    assert kept[1]["loss"] != plain[1]["loss"]


@pytest.mark.slow
def test_item_weighting_changes_the_average_in_the_simulation(full_run, tmp_path):
    """Through Flower's simulation engine: the clients' counts reach the server, whose average then differs from
    FedAvg's (round 1 trains from the same weights, so its loss is the plain run's)."""
    out = tmp_path / "weighted"
    simulate(TINY.replace(clients_per_round=2, rounds=2, item_weighted=True), out=out)
    weighted, plain = ([json.loads(x) for x in (f / "metrics.jsonl").read_text().splitlines()] for f in (out, full_run))
    assert weighted[0]["loss"] == plain[0]["loss"] and weighted[0]["failed"] == []
    assert weighted[1]["loss"] != plain[1]["loss"]


def test_linear_lr_schedule_scales_each_rounds_local_learning_rate():
    cfg = TINY.replace(rounds=4, lr=0.01, lr_schedule="linear")
    assert [cfg.for_round(r).fit.lr for r in (1, 2, 3, 4)] == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    assert cfg.for_round(2).fit.batch_size == cfg.fit.batch_size and cfg.fit.lr == 0.01  # a copy, nothing else
    assert TINY.for_round(3) is TINY  # constant: the run's own configuration
    with pytest.raises(UserError, match="--lr-schedule linear sets the clients' local learning rate"):
        TINY.replace(lr_schedule="linear", mechanism="user-level", epsilon=8.0).validate()


@pytest.mark.slow
def test_linear_lr_schedule_reaches_the_clients_in_the_simulation(full_run, tmp_path):
    """Round 1 of 2 trains at the full rate (the plain run's loss), round 2 at half of it."""
    out = tmp_path / "linear"
    simulate(TINY.replace(clients_per_round=2, rounds=2, lr_schedule="linear"), out=out)
    linear, plain = ([json.loads(x) for x in (f / "metrics.jsonl").read_text().splitlines()] for f in (out, full_run))
    assert linear[0]["loss"] == plain[0]["loss"]
    assert linear[1]["loss"] != plain[1]["loss"]


def _scorers(a: Path, b: Path):
    return (torch.load(p / "model_last.pt", weights_only=True)["scorer.weight"] for p in (a, b))


@pytest.mark.slow
def test_a_failing_client_is_logged_and_the_round_completes(tmp_path):
    messages = []
    out = tmp_path / "run"
    simulate(
        TINY.replace(rounds=2, min_clients=2),
        out=out,
        client_app=make_client_app(mods=[fail_in_round(partition=1, server_round=2)]),
        progress=Progress(on_message=messages.append),
    )
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["clients"] == 3 and rounds[1]["clients"] == 2
    assert rounds[1]["failed"] == ["client 1"]
    assert any("client 1" in m and "injected failure" in m for m in messages)


@pytest.mark.slow
def test_below_the_minimum_the_run_stops_and_stays_resumable(tmp_path, cli):
    out = tmp_path / "run"
    with pytest.raises(RunError, match=r"round 2: 2 of 3 clients returned an update, fewer than --min-clients 3"):
        simulate(
            TINY.replace(rounds=3, min_clients=3),
            out=out,
            client_app=make_client_app(mods=[fail_in_round(partition=2, server_round=2)]),
        )
    assert not (out / "metrics.json").exists()
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    result = cli("simulate", "--resume", out)
    assert result.code == 0, result.err
    assert json.loads((out / "metrics.json").read_text())["rounds_run"] == 3


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategy", "fedsgd"], "'fedsgd' is not one of"),
        (["--rounds", "0"], "--rounds must be a positive integer"),
        (["--clients-per-round", "4"], "--clients-per-round 4 is more than --clients 3"),
        (["--server-momentum", "1.5"], "--server-momentum must be in [0, 1)"),
        (["--proximal-mu", "-1"], "--proximal-mu must be >= 0"),
        (["--partition", "per-user", "--clients-per-round", "500"], "more than the 120 clients"),
        (["--model", "pop"], "'pop' is not one of"),  # not offered: pop is not trained
        (
            ["--keep-optimizer", "--privacy", "dp-sgd", "--noise-multiplier", "1"],
            "--keep-optimizer keeps the AdamW state",
        ),
        (["--keep-optimizer", "--partition", "per-user"], "--keep-optimizer with --partition per-user"),
        (
            ["--item-weighted", "--privacy", "dp-sgd", "--noise-multiplier", "1"],
            "--item-weighted does not combine with --privacy dp-sgd",
        ),
        (["--item-weighted", "--strategy", "fedmedian"], "--item-weighted does not combine with --strategy fedmedian"),
    ],
)
def test_bad_federation_options(cli, tmp_path, flags, message):
    out = tmp_path / "run"
    args = [*TINY_FLAGS, *flags]
    if "per-user" in flags:
        args.remove("--clients")
        args.remove("3")
    result = cli("simulate", *args, "--out", out)
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_resume_refuses_a_folder_that_is_not_a_run(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("simulate", "--resume", tmp_path)
    assert result.code == 2 and "not a fedseqrec run folder" in result.err and "nothing to resume" in result.err
    result = cli("simulate", "--resume", tmp_path / "missing")
    assert result.code == 2 and "no such folder" in result.err


@pytest.mark.slow
def test_out_refuses_an_existing_run(cli, full_run):
    result = cli("simulate", *TINY_FLAGS, "--out", full_run)
    assert result.code == 2 and "already holds a run" in result.err


def test_out_refuses_a_file_before_loading_anything(cli, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    result = cli("simulate", *TINY_FLAGS, "--out", existing)
    assert result.code == 2 and "is a file" in result.err and "internal error" not in result.err
    assert existing.read_text() == "keep me"


def test_a_deployed_node_reads_its_data_path_from_the_node_config(tmp_path, cli):
    prepared = tmp_path / "prepared"
    result = cli(
        "data",
        "prepare",
        "--shop-users",
        "120",
        "--shop-items",
        "80",
        "--shop-categories",
        "5",
        "--shop-days",
        "20",
        "--out",
        prepared,
    )
    assert result.code == 0, result.err
    cfg = TINY.replace(data="/nowhere/on/the/server")
    context = client_context(TINY, 2)
    context.node_config["data-path"] = str(prepared)
    ds = cached_dataset(TINY.replace(data=str(prepared)).data)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_global_model(ds.sequences, TINY.model).state_dict())
    reply = make_client_app()(message("train", arrays, cfg), context)
    data = load_client_data(TINY.replace(data=str(prepared)), 2, 3)
    assert reply.content["metrics"]["num-examples"] == int((ds.split.train_end[data.users] >= 2).sum()) > 0


@pytest.mark.slow
def test_a_pool_of_nodes_serves_many_clients_with_the_same_results(tmp_path):
    """120 one-user clients, 10 a round: served by 120 simulated nodes (each asked which client it is before the
    first round) or by a pool of 12 that learn their client from each message — the same weights either way."""
    cfg = TINY.replace(partition="per-user", clients=None, clients_per_round=10, rounds=2, eval_every=2)
    one_each, _ = simulate(cfg, out=tmp_path / "nodes")
    pooled, folder = simulate(cfg.replace(client_pool=12), out=tmp_path / "pool")
    assert json.loads((folder.path / "config.json").read_text())["run_config"]["client-pool"] == 12
    assert pooled["test"] == one_each["test"]
    assert torch.equal(*_scorers(tmp_path / "nodes", tmp_path / "pool"))


PLANNED = {
    "DP implied by --epsilon": {"epsilon": 3.0},
    "user-level with public users": {
        "mechanism": "user-level",
        "users_per_round": 40,
        "noise_multiplier": 1.0,
        "public_users": 0.1,
        "partition": "dirichlet",
    },
    "audit seed given": {"audit_canaries": 20, "audit_seed": 11},
    "dp-fedavg per user": {
        "mechanism": "dp-fedavg",
        "partition": "per-user",
        "clients": None,
        "clients_per_round": 10,
        "central_noise": 1.0,
    },
}


def _three_plans(cfg: RunConfig, tmp_path: Path) -> list[RunConfig]:
    """The plan of the same options through simulate, deploy local and flwr run, with what each engine adds by
    design undone: deploy's absolute paths, the simulation's node pool."""
    from fedseqrec.deployment.runner import prepare_deployment
    from fedseqrec.server.planning import prepare_run
    from fedseqrec.server.server_app import flower_run_plan

    simulated, folder, _ = prepare_run(cfg, tmp_path / "simulate", None, None)
    folder.release()
    deployed, _ = prepare_deployment(cfg, tmp_path / "deploy")
    flower = flower_run_plan(cfg.to_run_config()).config
    plans = [replace(simulated, algorithm=replace(simulated.algorithm, client_pool=None)), deployed, flower]
    return [plan.replace(out=None, data=cfg.data.data) for plan in plans]


@pytest.mark.parametrize("options", PLANNED.values(), ids=PLANNED.keys())
def test_simulate_deploy_and_flwr_run_plan_a_run_alike(options, tmp_path):
    simulated, deployed, flower = _three_plans(TINY.replace(**options), tmp_path)
    assert simulated == deployed == flower
    assert simulated == simulated.planned()  # planning twice changes nothing
    if "epsilon" in options:
        assert simulated.privacy.mechanism == "dp-sgd" and simulated.privacy.horizon == TINY.algorithm.rounds
    if "audit_seed" in options:
        assert simulated.data.audit_seed == 11


def test_every_engine_draws_an_audit_seed_itself(tmp_path):
    plans = _three_plans(TINY.replace(audit_canaries=20), tmp_path)
    assert all(plan.data.audit_seed is not None for plan in plans)


def test_flowers_run_config_alone_carries_the_implications():
    """What `flwr run --run-config epsilon=3` gives: the same run as `simulate --epsilon 3`."""
    from fedseqrec.server.server_app import flower_run_plan

    plan = RunConfig.from_run_config({"epsilon": 3.0}).planned()
    plan.validate()
    assert plan.privacy.mechanism == "dp-sgd" and plan.privacy.horizon == RunConfig().algorithm.rounds
    assert flower_run_plan({"epsilon": 3.0, "out": "unused"}).config.privacy == plan.privacy
