"""Differential privacy: ε against Google's independent accountants, the ledger across rounds and restarts,
budgets, DP training of every model in the simulation, reports, and bad privacy options."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message
from helpers import TINY as TINY_PLAIN
from helpers import TINY_FLAGS, client_context, independent_epsilons, message

from fedseqrec.client.client_app import make_client_app
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.task import build_global_model, cached_dataset
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.compat import dp_compatible
from fedseqrec.privacy.ledger import LedgerRecord, PrivacyLedger, reconcile
from fedseqrec.simulation.engine import simulate

TINY = TINY_PLAIN.replace(mechanism="dp-sgd", noise_multiplier=1.0)


# --- accounting against Google's dp-accounting --------------------------------------------------------------------


def test_the_issue_figures():
    records = [(1.5, 0.01, 2000)]
    assert epsilon(records, 1e-5, "rdp") == pytest.approx(1.4521, abs=1e-4)
    assert epsilon(records, 1e-5, "prv") == pytest.approx(1.3329, abs=1e-4)
    rdp, pld = independent_epsilons(records, 1e-5)
    assert rdp == pytest.approx(1.4521, abs=1e-4) and pld == pytest.approx(1.3228, abs=1e-4)


LEDGERS = [
    [(0.8, 0.05, 100)],
    [(1.0, 0.2, 6)] * 20,  # a silo: 20 rounds of 6 steps
    [(1.2, 0.1, 10), (2.0, 0.1, 10), (0.9, 0.25, 4)],  # records that differ round to round
    [(3.0, 0.5, 2)] * 30,
    [(1.5, 0.01, 2000)],
]


@pytest.mark.parametrize("records", LEDGERS)
def test_epsilon_agrees_with_an_independent_accountant(records):
    delta = 1e-5
    ind_rdp, ind_pld = independent_epsilons(records, delta)
    ours_rdp, ours_prv = epsilon(records, delta, "rdp"), epsilon(records, delta, "prv")
    assert ours_rdp == pytest.approx(ind_rdp, rel=0.01)
    assert ours_prv == pytest.approx(ind_pld, rel=0.01)
    # never reported below the (tightest) independent PLD figure by more than 1 %
    assert min(ours_rdp, ours_prv) >= ind_pld * 0.99


# --- the ledger ---------------------------------------------------------------------------------------------------


def test_ledger_composes_persists_and_refuses_disagreeing_copies(tmp_path):
    ledger = PrivacyLedger("3", 1e-5, "rdp", budget=5.0)
    values = []
    for r in range(1, 5):
        ledger.add(LedgerRecord(r, 1.0, 0.1, 10))
        values.append(ledger.epsilon())
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(epsilon([(1.0, 0.1, 40)], 1e-5), rel=1e-9)
    path = tmp_path / "node" / "ledger.json"
    ledger.save(path)
    assert PrivacyLedger.load(path) == ledger
    shorter = PrivacyLedger("3", 1e-5, "rdp", 5.0, ledger.records[:2])
    assert reconcile(shorter, PrivacyLedger.load(path)) == ledger  # the longer copy wins
    assert reconcile(None, ledger) == ledger
    forged = PrivacyLedger("3", 1e-5, "rdp", 5.0, [LedgerRecord(1, 9.0, 0.1, 10)])
    with pytest.raises(UserError, match="disagree"):
        reconcile(forged, ledger)
    with pytest.raises(ValueError):
        ledger.add(LedgerRecord(2, 1.0, 0.1, 10))  # rounds only move forward
    path.write_text("{broken")
    with pytest.raises(UserError, match="unreadable privacy ledger"):
        PrivacyLedger.load(path)


def _context(cfg: RunConfig, partition: int, ledger: Path) -> Context:
    return client_context(cfg, partition, ledger)


def _train(app, cfg: RunConfig, arrays: ArrayRecord, server_round: int, context: Context) -> Message:
    return app(message("train", arrays, cfg, server_round), context)


def test_epsilon_grows_every_round_survives_a_restart_and_stays_within_budget(tmp_path):
    cfg = TINY.replace(budget=None, noise_multiplier=1.2)
    ds = cached_dataset(cfg.data)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_global_model(ds.sequences, cfg.model).state_dict())
    app, ledger = make_client_app(), tmp_path / "client-1.json"
    first = _context(cfg, 1, ledger)
    epsilons = []
    for server_round in (1, 2, 3):
        metrics = _train(app, cfg, arrays, server_round, first).content["metrics"]
        epsilons.append(metrics["epsilon"])
        assert list(metrics["ledger-round"]) == list(range(1, server_round + 1))
    assert epsilons[0] > 0 and all(b > a for a, b in zip(epsilons, epsilons[1:], strict=False))
    # The SuperNode restarts: new node id, empty context.state, the same node-local ledger file.
    restarted = _context(cfg, 1, ledger)
    metrics = _train(app, cfg, arrays, 4, restarted).content["metrics"]
    records = list(zip(metrics["ledger-noise"], metrics["ledger-rate"], metrics["ledger-steps"], strict=True))
    assert len(records) == 4 and metrics["epsilon"] > epsilons[-1]
    assert metrics["epsilon"] == pytest.approx(epsilon(records, metrics["delta"]), rel=1e-9)
    # A budget just above the current ε: the next round would exceed it, so the client declines.
    budgeted = cfg.replace(budget=metrics["epsilon"] * 1.05)
    reply = _train(app, budgeted, arrays, 5, restarted)
    assert not reply.content.array_records
    assert reply.content["metrics"]["declined"] == 1
    assert "privacy budget" in reply.content["status"]["reason"]
    assert reply.content["metrics"]["epsilon"] == pytest.approx(metrics["epsilon"])
    assert reply.content["metrics"]["epsilon"] <= budgeted.privacy.budget


def test_default_delta_is_below_one_over_the_users_and_a_large_one_is_refused(tmp_path, cli):
    cfg = TINY.replace()
    ds = cached_dataset(cfg.data)
    arrays = ArrayRecord(build_global_model(ds.sequences, cfg.model).state_dict())
    metrics = _train(make_client_app(), cfg, arrays, 1, _context(cfg, 0, tmp_path / "l.json")).content["metrics"]
    users = len(ds.partition.clients()[0])
    assert metrics["delta"] <= min(1e-5, 0.1 / users)
    result = cli("simulate", *TINY_FLAGS, "--epsilon", "4", "--delta", "0.05", "--out", tmp_path / "run")
    assert result.code == 2 and "--delta 0.05 is not below 1 / 40" in result.err
    assert not (tmp_path / "run").exists()


# --- DP-SGD itself ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_ghost_clipping_norms_equal_the_per_sample_gradient_norms(name):
    """Ghost clipping is the default for the Transformer models: its per-user norms must be the true ones."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    from fedseqrec.models.base import SequenceLoss

    cfg = TINY.replace(model=name, dropout=0.0)  # both passes must compute the same function
    ds = cached_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, cfg.model)
    windows = TrainingWindows(ds.sequences, ds.split, max_len=cfg.model.max_len)
    batch = windows.batch_of([torch.stack(column) for column in zip(*[windows[i] for i in range(6)], strict=True)])

    hooked = dp_compatible(model)
    GradSampleModule(hooked, loss_reduction="mean")
    torch.manual_seed(1)  # bert4rec's masks
    hooked.calculate_loss(batch, SequenceLoss(cfg.model.label_smoothing)).backward()
    samples = [getattr(p, "grad_sample", None) for p in hooked.parameters() if p.requires_grad]
    per_param = [g.reshape(6, -1).norm(dim=1) for g in samples if g is not None]
    true_norms = torch.stack(per_param, dim=1).norm(dim=1)

    ghosted = dp_compatible(model)
    wrapped = GradSampleModuleFastGradientClipping(ghosted, loss_reduction="mean", use_ghost_clipping=True)

    class _Optimizer:  # the loss wrapper only reads the reduction from the optimizer
        loss_reduction = "mean"

    criterion = DPLossFastGradientClipping(wrapped, _Optimizer(), SequenceLoss(cfg.model.label_smoothing), "mean")
    torch.manual_seed(1)
    loss = ghosted.calculate_loss(batch, criterion)
    loss.loss_per_sample.mean().backward()  # ghost clipping's first pass: per-sample norms only
    assert torch.allclose(wrapped.get_norm_sample(), true_norms, rtol=1e-3)


# --- whole private runs -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec", "lstm"])
def test_every_model_trains_under_dp_in_the_simulation(tmp_path, name):
    cfg = TINY.replace(model=name, rounds=1, clients=2, epsilon=3.0, noise_multiplier=None)
    results, folder = simulate(cfg, out=tmp_path / name)
    report = json.loads((folder.path / "privacy_report.json").read_text())
    assert len(report["clients"]) == 2
    assert 0 < report["max_epsilon"] <= 3.0  # the target, calibrated for the one planned round
    ds = cached_dataset(cfg.data)
    torch.manual_seed(cfg.data.seed)  # the server's initial global model
    start = build_global_model(ds.sequences, cfg.model)
    trained = torch.load(folder.path / "model_last.pt", weights_only=True)
    assert set(trained) == set(start.state_dict())  # the plain model's own names, no Opacus aliases
    assert not torch.equal(trained["scorer.weight"], start.state_dict()["scorer.weight"])  # DP-SGD moved it
    # the reported test figure is the saved best model's, recomputed here
    best = build_global_model(ds.sequences, cfg.model, torch.load(folder.path / "model.pt", weights_only=True))
    again = evaluate_sums(best, ds.sequences, ds.split, "test", max_len=cfg.model.max_len).result()
    assert results["test"]["NDCG@10"] == pytest.approx(again["NDCG@10"], rel=1e-9)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory) -> Path:
    """Fixed noise, a budget that lasts two of four rounds: the run must end cleanly after round 2."""
    out = tmp_path_factory.mktemp("dp") / "run"
    probe = PrivacyLedger("0", 1e-5)
    for r in (1, 2, 3):
        probe.add(LedgerRecord(r, 1.0, 1 / 3, 3))  # 40 users a client, batch 16: 3 batches, q = 1/3
    budget = (probe.epsilon() + PrivacyLedger("0", 1e-5, records=probe.records[:2]).epsilon()) / 2
    simulate(TINY.replace(rounds=4, min_clients=2, budget=round(budget, 3)), out=out)
    return out


@pytest.mark.slow
def test_budget_ends_the_run_cleanly_and_no_epsilon_exceeds_it(budget_run):
    metrics = json.loads((budget_run / "metrics.json").read_text())
    assert metrics["rounds_run"] == 2 and "privacy budget exhausted" in metrics["stopped"]
    report = json.loads((budget_run / "privacy_report.json").read_text())
    budget = report["budget"]
    for client in report["clients"]:
        assert client["epsilon"] <= budget and client["rounds_trained"] == 2
    history = [h["max_epsilon"] for h in report["history"]]
    assert all(b > a for a, b in zip(history, history[1:], strict=False)) and max(history) <= budget
    for name in ("privacy_report.md", "epsilon_per_round.png", "ndcg_per_round.png"):
        assert (budget_run / name).stat().st_size > 0


@pytest.mark.slow
def test_every_reported_epsilon_rechecks_with_an_independent_accountant(budget_run):
    report = json.loads((budget_run / "privacy_report.json").read_text())
    assert report["privacy_unit"].startswith("user-level")
    for client in report["clients"]:
        assert set(client) >= {"client", "epsilon", "delta", "accountant", "budget", "status", "ledger"}
        records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in client["ledger"]]
        rdp, pld = independent_epsilons(records, client["delta"])
        assert client["accountant"] == "rdp"
        assert client["epsilon"] == pytest.approx(rdp, rel=0.01)
        assert client["epsilon"] >= pld * 0.99


@pytest.mark.slow
def test_report_regenerates_and_compares(budget_run, tmp_path, cli):
    (budget_run / "privacy_report.json").unlink()
    result = cli("report", budget_run)
    assert result.code == 0, result.err
    assert (budget_run / "privacy_report.json").exists()
    plot = tmp_path / "curve.png"
    result = cli("report", "--compare", budget_run, "--out", plot)
    assert result.code == 0 and plot.stat().st_size > 0 and "largest ε" in result.out


@pytest.mark.slow
def test_resuming_a_run_whose_budget_is_spent_is_refused(budget_run, cli):
    result = cli("simulate", "--resume", budget_run, "--rounds", "6")
    assert result.code == 2 and "privacy budget already spent" in result.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--noise-multiplier", "-1"], "--noise-multiplier must be a positive number"),
        (["--epsilon", "0"], "--epsilon must be a positive number"),
        (["--epsilon", "-2"], "--epsilon must be a positive number"),
        (["--epsilon", "4", "--delta", "1"], "--delta must be in (0, 1)"),
        (["--epsilon", "4", "--budget", "2"], "--budget 2.0 is below the target --epsilon 4.0"),
        (["--privacy", "dp-sgd"], "exactly one of --noise-multiplier and --epsilon"),
        (["--epsilon", "4", "--noise-multiplier", "1"], "exactly one of"),
        (["--epsilon", "4", "--model", "gru4rec", "--grad-sample-mode", "ghost"], "not correct for gru4rec"),
        (["--budget", "3"], "--budget needs --privacy dp-sgd"),
        (["--epsilon", "4", "--tie-items"], "--tie-items is not supported with --privacy dp-sgd"),
    ],
)
def test_bad_privacy_options(cli, tmp_path, flags, message):
    result = cli("simulate", *TINY_FLAGS, *flags, "--out", tmp_path / "run")
    assert result.code == 2, result.err
    assert message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


def test_more_steps_or_less_noise_cost_more_privacy():
    base = epsilon([(1.0, 0.1, 100)], 1e-5)
    assert epsilon([(1.0, 0.1, 200)], 1e-5) > base > epsilon([(2.0, 0.1, 100)], 1e-5)
    assert math.isinf(epsilon([(1e-3, 1.0, 1)], 1e-5)) or epsilon([(1e-3, 1.0, 1)], 1e-5) > 100
    assert np.isclose(epsilon([], 1e-5), 0.0)


@pytest.mark.slow
def test_resume_beyond_the_calibrated_horizon_keeps_the_noise_and_the_budget_stops_the_run(tmp_path, cli):
    """An --epsilon run records the rounds its noise was calibrated for; a resume that asks for more rounds keeps
    that noise (it is never recalibrated for a longer horizon) and the budget ends the run."""
    out = tmp_path / "run"
    first = cli("simulate", *TINY_FLAGS, "--rounds", "2", "--epsilon", "3", "--budget", "4.5", "--out", out)
    assert first.code == 0, first.err
    assert json.loads((out / "config.json").read_text())["run_config"]["horizon"] == 2
    resumed = cli("simulate", "--resume", out, "--rounds", "8")
    assert resumed.code == 0, resumed.err
    assert json.loads((out / "config.json").read_text())["run_config"]["horizon"] == 2  # kept on resume
    metrics = json.loads((out / "metrics.json").read_text())
    assert 2 < metrics["rounds_run"] < 8 and "privacy budget exhausted" in metrics["stopped"]
    for ledger in (out / "ledgers").glob("client-*.json"):
        records = PrivacyLedger.load(ledger).records
        assert len({r.noise_multiplier for r in records}) == 1  # σ of the 2-round calibration, every round
    report = json.loads((out / "privacy_report.json").read_text())
    assert 3.0 < report["max_epsilon"] <= 4.5


@pytest.mark.slow
def test_report_recomputes_from_every_record_not_from_privacy_json_alone(budget_run, tmp_path, cli):
    """A consistent edit of privacy.json (a client's last round dropped, its ε lowered to match) cannot lower the
    report: state.pt and the client's own ledger file still hold the round, and the disagreement is flagged."""
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(budget_run, run)
    privacy = json.loads((run / "privacy.json").read_text())
    entry = privacy["clients"]["0"]
    truth = max(entry["epsilon"], entry["epsilon_checked"])
    entry["ledger"] = entry["ledger"][:1]
    entry["epsilon"] = entry["epsilon_checked"] = PrivacyLedger("0", entry["delta"], records=[
        LedgerRecord(**r) for r in entry["ledger"]]).epsilon()  # fmt: skip # (one record)
    (run / "privacy.json").write_text(json.dumps(privacy))
    result = cli("report", run)
    report = json.loads((run / "privacy_report.json").read_text())
    client = next(c for c in report["clients"] if c["client"] == "0")
    assert result.code == 1 and client["epsilon"] == pytest.approx(truth, rel=1e-6)
    assert any("state.pt gives" in flag for flag in report["flags"])
    assert any("ledgers/client-0.json gives" in flag for flag in report["flags"])
