"""The privacy of a hyper-parameter search over private runs (Papernot & Steinke 2022): the search's ε against
dp-accounting's RepeatAndSelectDpEvent, the random number of trials, the noised validation score in the search
ledger, and what an accounted search refuses."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import optuna
import pytest

from fedseqrec.privacy.tuning import (
    draw_trials,
    epsilon_of_rdp,
    expected_trials,
    gamma_for,
    noised_mean,
    orders,
    rdp_of,
    score_record,
    search_rdp,
)

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event as events  # noqa: E402

INTEGER_ORDERS = list(range(2, 65))
DELTA = 1e-5


def _their_search_epsilon(records, score_noise, mean, eta, alphas=None) -> float:
    """dp-accounting's ε of the search: the trial as composed DP events, repeated and selected."""
    trial = events.ComposedDpEvent(
        [
            *[
                events.SelfComposedDpEvent(events.PoissonSampledDpEvent(q, events.GaussianDpEvent(s)), n)
                for s, q, n in records
            ],
            events.GaussianDpEvent(score_noise),
        ]
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=alphas) if alphas else dp_accounting.rdp.RdpAccountant()
    accountant.compose(events.RepeatAndSelectDpEvent(trial, mean, eta))
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize(
    ("records", "score_noise", "mean", "eta"),
    [
        ([(1.0, 0.1, 200)], 3.0, 10, 0),
        ([(0.8, 0.3, 60)], 3.0, 10, 1),
        ([(2.0, 0.5, 100)], 5.0, 20, 2),
        ([(3.0, 1.0, 1), (1.2, 0.05, 500)], 2.0, 5, 0),  # a release before the rounds, then the rounds
    ],
)
def test_the_search_epsilon_equals_dp_accounting(records, score_noise, mean, eta):
    gamma = gamma_for(mean, eta)
    assert expected_trials(eta, gamma) == pytest.approx(mean, rel=1e-9)
    trial = rdp_of([*records, score_record(score_noise)], INTEGER_ORDERS)
    ours = epsilon_of_rdp(search_rdp(trial, eta, gamma, INTEGER_ORDERS), DELTA, INTEGER_ORDERS)
    assert ours == pytest.approx(_their_search_epsilon(records, score_noise, mean, eta, INTEGER_ORDERS), rel=0.01)
    # With Opacus' fractional orders too (where dp-accounting's series stops converging below order 2 and drops
    # them), the figure printed is no larger, and never below one trial's.
    logging.getLogger().setLevel(logging.ERROR)
    printed = epsilon_of_rdp(search_rdp(rdp_of([*records, score_record(score_noise)]), eta, gamma), DELTA)
    assert printed <= _their_search_epsilon(records, score_noise, mean, eta) * 1.0001
    assert printed > epsilon_of_rdp(rdp_of(records), DELTA)


def test_the_printed_epsilon_of_the_benchmarks_search_is_dp_accountings_within_one_percent():
    # benchmarks/results/tune_private-ml-100k.json: the item selection's release, then 150 rounds at ε = 8
    records = [(5.0, 1.0, 1), (2.66796875, 0.3181336161187699, 150)]
    logging.getLogger().setLevel(logging.ERROR)
    printed = epsilon_of_rdp(search_rdp(rdp_of([*records, score_record(3.0)]), 0, gamma_for(10, 0)), DELTA)
    assert printed == pytest.approx(11.986, abs=0.001)
    assert printed == pytest.approx(_their_search_epsilon(records, 3.0, 10, 0), rel=0.01)  # 12.041


def test_a_search_costs_far_less_than_its_trials_composed():
    records, mean = [(1.0, 0.1, 200)], 10
    gamma = gamma_for(mean, 0)
    one = rdp_of([*records, score_record(3.0)])
    searched = epsilon_of_rdp(search_rdp(one, 0, gamma), DELTA)
    composed = epsilon_of_rdp(one * mean, DELTA)  # ten trials of a fixed count, composed
    assert epsilon_of_rdp(one, DELTA) < searched < 0.5 * composed


@pytest.mark.parametrize("eta", [0, 1, 2.5])
def test_the_number_of_trials_is_drawn_from_its_distribution(eta):
    gamma = gamma_for(8, eta)
    rng = np.random.default_rng(0)
    draws = np.array([draw_trials(eta, gamma, rng) for _ in range(40_000)])
    assert draws.min() >= 1
    assert draws.mean() == pytest.approx(8, rel=0.05)
    if eta == 1:  # the geometric: P[K = 1] = γ
        assert np.mean(draws == 1) == pytest.approx(gamma, abs=0.01)


def test_the_score_noise_is_a_gaussian_mechanism_of_sensitivity_one():
    assert score_record(4.0) == (4.0, 1.0, 1)
    ours = epsilon_of_rdp(rdp_of([score_record(4.0)]), DELTA)
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(orders()))
    accountant.compose(events.GaussianDpEvent(4.0))
    assert ours == pytest.approx(accountant.get_epsilon(DELTA), rel=0.01)
    rng = np.random.default_rng(1)
    released = np.array([noised_mean(50.0, 100, 4.0, rng) for _ in range(20_000)])
    assert released.mean() == pytest.approx(0.5, abs=0.002)
    assert released.std() == pytest.approx(4.0 / 100, rel=0.03)


# --- a search through the command line --------------------------------------------------------------------------

PRIVATE = [
    "tune", "simulate", "--shop-users", "300", "--shop-items", "150", "--hidden", "16", "--heads", "1",
    "--inner", "32", "--clients", "3", "--rounds", "2", "--privacy", "user-level", "--users-per-round", "100",
    "--epsilon", "4", "--strategy", "fedadam",
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--sampler", "tpe"], "draws each trial's options independently at random"),
        (["--pruner", "median"], "reads one noised score per trial"),
        (["--timeout", "60"], "runs the number of trials it drew"),
        (["--search", "epsilon=2:8"], "keeps what the privacy ledger depends on fixed"),
        (["--search", "rounds=2:4"], "keeps what the privacy ledger depends on fixed"),
        (["--release", "best-validation"], "releases each trial's last round"),
        (["--trials-eta", "-0.5"], "--trials-eta must be >= 0"),
        (["--trials", "1"], "a mean number of trials above 1"),
    ],
)
def test_an_accounted_search_refuses_what_its_accounting_does_not_cover(cli, tmp_path, extra, words):
    result = cli(*PRIVATE, *extra, "--out", tmp_path / "tune")
    assert result.code == 2 and words in result.err


@pytest.mark.slow
def test_a_private_search_is_accounted_in_its_ledger(cli, tmp_path):
    out = tmp_path / "tune"
    result = cli(*PRIVATE, "--trials", "2", "--score-noise", "2", "--out", out)
    assert result.code == 0, result.err
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    drawn = study.user_attrs["private_search"]
    ledger = json.loads((out / "privacy_search.json").read_text())
    assert ledger["search"] == drawn and len(ledger["trials"]) == drawn["trials"]
    assert ledger["same_mechanism_in_every_trial"]
    for trial in ledger["trials"]:  # each trial's records are its run folder's, and the score's noise is there
        report = json.loads((out / "trials" / f"trial-{trial['trial']:04d}" / "privacy_report.json").read_text())
        worst = max(report["clients"], key=lambda c: c["epsilon"])
        assert trial["records"] == [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in worst["ledger"]]
        assert trial["score_record"] == [2.0, 1.0, 1]
    records = [tuple(r) for r in ledger["trials"][0]["records"]]
    assert ledger["single_run_epsilon"] == pytest.approx(epsilon_of_rdp(rdp_of(records), ledger["delta"]), rel=1e-6)
    assert ledger["single_run_epsilon"] <= 4.0 + 0.01
    gamma = gamma_for(drawn["mean_trials"], drawn["eta"])
    again = epsilon_of_rdp(search_rdp(rdp_of([*records, (2.0, 1.0, 1)]), drawn["eta"], gamma), ledger["delta"])
    assert ledger["epsilon"] == pytest.approx(again, rel=1e-9)
    theirs = _their_search_epsilon(records, 2.0, drawn["mean_trials"], drawn["eta"], INTEGER_ORDERS)
    assert ledger["epsilon"] <= theirs * 1.0001 and math.isfinite(ledger["epsilon"])
    assert "privacy of the search: ε =" in result.out
    summary = json.loads((out / "study.json").read_text())
    assert summary["search_privacy"].startswith("accounted")
    best = summary["best"]
    assert best["value"] == max(t["noised_score"] for t in ledger["trials"])  # the best noised score is released
    assert best["value"] != best["valid"]["NDCG@10"]  # (the score read is the noised one)
    # The number of trials was drawn once: running the command again continues with the same K.
    assert cli(*PRIVATE, "--trials", "2", "--score-noise", "2", "--out", out).code == 0
    assert (
        optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").user_attrs["private_search"]
        == drawn
    )
