"""The empirical privacy audit: its statistics against cases with known answers, the canaries and their sealed coins,
the membership attack's metrics by hand, and whole runs — without DP (the attack works), with DP (the bound holds)
and with a deliberately broken mechanism (the audit catches it)."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest
from faults import broken_client_app
from helpers import TINY_FLAGS
from scipy import stats

from fedseqrec.data.canaries import SEALED, canary_ids
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.shop import ShopConfig
from fedseqrec.evaluation.binary import auc, tpr_at_fpr
from fedseqrec.federated.config import RunConfig
from fedseqrec.privacy.audit import audit, epsilon_lower_bound, guess_grid, p_value

# --- the statistics -----------------------------------------------------------------------------------------------


def test_all_guesses_right_has_a_closed_form():
    """δ = 0, v = r: the p-value is q^r, so the bound solves q^r = α: q = α^(1/r), ε = ln(q / (1 − q))."""
    for r, alpha in ((10, 0.05), (50, 0.05), (200, 0.01)):
        q = alpha ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0, alpha) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_p_value_at_zero_is_a_fair_coin_and_grows_with_epsilon():
    assert p_value(100, 40, 28, 0.0, 0.0) == pytest.approx(stats.binom.sf(27, 40, 0.5))
    values = [p_value(100, 40, 28, eps, 1e-5) for eps in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values) and values[-1] > 0.9


def test_delta_only_weakens_the_bound():
    strict = epsilon_lower_bound(1000, 200, 170, 0.0)
    assert epsilon_lower_bound(1000, 200, 170, 1e-6) <= strict
    assert epsilon_lower_bound(1000, 200, 170, 1e-3) < strict
    # the δ term by hand for a small case: 2mδ · max_i P[v > Bin(r, q) >= v − i] / i
    m, r, v, eps, delta = 10, 4, 3, 1.0, 0.01
    q = 1 / (1 + math.exp(-eps))
    below = [sum(stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1)]
    expected = stats.binom.sf(v - 1, r, q) + 2 * m * delta * max(below)
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected)


def test_randomized_response_is_bounded_by_its_own_epsilon():
    """Each canary's score is its coin flipped with probability 1/(1+e^ε): an ε-DP release of the coin. The bound
    must stay below ε, and with many canaries come close to it."""
    true_eps, m = 1.0, 5000
    rng = np.random.default_rng(7)
    coins = rng.random(m) < 0.5
    keep = rng.random(m) < 1 / (1 + math.exp(-true_eps))
    scores = np.where(coins == keep, 1.0, -1.0) + rng.normal(0, 1e-3, m)  # tiny jitter: an order among ties
    found = audit(scores, coins, delta=0.0)
    assert 0.6 < found.epsilon_lower_bound <= true_eps


def test_scores_unrelated_to_the_coins_give_no_bound():
    positive = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        positive += audit(rng.normal(size=400), rng.random(400) < 0.5, delta=1e-5).epsilon_lower_bound > 0
    assert positive <= 1  # each run is wrong with probability at most 5 %


def test_guesses_are_the_top_and_bottom_scores():
    scores = np.arange(20, dtype=float)
    coins = scores >= 10  # perfectly separated
    found = audit(scores, coins, delta=0.0)
    assert found.correct == found.guesses and found.guessed_out in (0, found.guessed_in)
    assert found.choices == len(guess_grid(20))


# --- the attack's metrics by hand ------------------------------------------------------------------------------


def test_auc_counts_ties_as_half():
    # members 3, 2, 2; non-members 2, 1: pairs (3>2, 3>1, 2=2, 2>1, 2=2, 2>1) → (1+1+.5+1+.5+1)/6
    assert auc(np.array([3, 2, 2, 2, 1]), np.array([1, 1, 1, 0, 0], dtype=bool)) == pytest.approx(5 / 6)


def test_tpr_at_fpr_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    members = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(1 / 4)  # above the best non-member (0.8)
    assert tpr_at_fpr(scores, members, 1 / 6) == pytest.approx(3 / 4)  # one non-member (0.8) may pass


# --- canaries and the sealed coins ---------------------------------------------------------------------------------

SHOP = DataConfig(data="shop", shop=ShopConfig(users=300, items=100))


def test_canaries_are_in_the_training_data_exactly_when_their_coin_says_so():
    ds = load_dataset(DataConfig(**{**SHOP.__dict__, "audit_canaries": 60, "audit_users": 30, "audit_seed": 5}))
    plan, vocab = ds.audit, ds.sequences.vocab
    users = set(map(str, vocab.users))
    included = {c["token"] for c in plan["canaries"] if c["included"]}
    assert 15 < len(included) < 45
    assert {c["token"] for c in plan["canaries"]} & users == included
    ids = canary_ids(vocab.users)
    assert (ds.split.valid_pos[ids] < 0).all() and (ds.split.test_pos[ids] < 0).all()  # train only
    assert (ds.split.train_end[ids] == ds.sequences.lengths[ids]).all()
    for user in plan["users"]:
        assert (user["token"] in users) == user["included"]
    canary = next(c for c in plan["canaries"] if c["included"])
    row = int(np.flatnonzero(vocab.users.astype(str) == canary["token"])[0])
    start = ds.sequences.offsets[row]
    items = ds.sequences.items[start : start + ds.sequences.lengths[row]]
    assert [str(vocab.items[i]) for i in items] == canary["items"] and len(set(canary["items"])) == len(items)
    again = load_dataset(DataConfig(**{**SHOP.__dict__, "audit_canaries": 60, "audit_users": 30, "audit_seed": 5}))
    assert again.audit == plan  # every simulated client builds the same data from the recorded seed


def test_more_canaries_than_users_is_refused(cli, tmp_path):
    result = cli("train", "--data", "shop", "--shop-users", "50", "--audit-canaries", "80", "--out", tmp_path / "r")
    assert result.code == 2 and "--audit-canaries 80 is more than the data's 50 users" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_audit_refuses_a_folder_without_a_model_or_canaries(cli, tmp_path):
    result = cli("audit", tmp_path)
    assert result.code == 2 and "not a fedseqrec run folder" in result.err
    (tmp_path / "config.json").write_text(json.dumps({"data": {"data": "shop", "audit_canaries": 10}}))
    (tmp_path / SEALED).write_text("{}")
    result = cli("audit", tmp_path)
    assert result.code == 2 and "no model.pt" in result.err and "Traceback" not in result.err
    (tmp_path / "config.json").write_text(json.dumps({"data": {"data": "shop"}}))
    assert "no canaries to audit" in cli("audit", tmp_path).err


# --- whole runs ----------------------------------------------------------------------------------------------------

RUN = ["--data", "shop", "--shop-users", "600", "--shop-items", "200", "--hidden", "32"]


@pytest.mark.slow
def test_without_dp_the_audit_finds_a_positive_bound(cli, tmp_path):
    out = tmp_path / "train"
    result = cli("train", *RUN, "--epochs", "30", "--audit-canaries", "200", "--audit-users", "100", "--out", out)
    assert result.code == 0, result.err
    found = json.loads((out / "audit.json").read_text())
    assert found["canaries"]["epsilon_lower_bound"] > 0.5 and found["canaries"]["auc"] > 0.7
    assert found["claimed"]["epsilon"] is None and found["consistent"] is None
    assert "real_users" in found and 0.0 <= found["real_users"]["auc"] <= 1.0
    sealed = out / SEALED
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o400
    assert json.loads(sealed.read_text())["seed"] == json.loads((out / "config.json").read_text())["data"]["audit_seed"]
    assert (out / "audit.png").stat().st_size > 0 and "empirical ε ≥" in result.out


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True])
def test_dp_sgd_keeps_its_bound_and_a_broken_mechanism_is_caught(cli, tmp_path, broken):
    """σ = 10 claims ε ≈ 0.8 over 10 rounds. Honest: the bound stays below it. With the noise switched off by a mod
    the test adds to the ClientApp (the ledgers still record σ = 10) the canaries are learnt and the bound exceeds
    the claim: flagged, exit 1. Nothing in the package can switch the noise off."""
    from fedseqrec.simulation.engine import simulate

    out = tmp_path / "run"
    cfg = RunConfig.of(
        data="shop",
        shop_users=600,
        shop_items=200,
        hidden=32,
        clients=3,
        rounds=10,
        local_epochs=3,
        privacy="dp-sgd",
        noise_multiplier=10.0,
        audit_canaries=300,
        out=str(out),
    )
    simulate(cfg, client_app=broken_client_app() if broken else None)
    result = cli("audit", out)
    found = json.loads((out / "audit.json").read_text())
    claimed = found["claimed"]["epsilon"]
    report = json.loads((out / "privacy_report.json").read_text())
    assert 0 < claimed < 1.5 and report["audit"]["epsilon_lower_bound"] == found["epsilon_lower_bound"]
    if broken:
        assert found["epsilon_lower_bound"] > claimed and found["consistent"] is False
        assert result.code == 1 and "flagged" in result.err and any("audit" in f for f in report["flags"])
    else:
        assert found["epsilon_lower_bound"] <= claimed and found["consistent"] is True
        assert result.code == 0 and report["flags"] == []
    assert "Empirical audit" in (out / "privacy_report.md").read_text()


def test_no_switch_in_the_package_turns_the_noise_off():
    """The only way to break DP-SGD is from outside the package (as the test above does)."""
    package = Path(__file__).resolve().parents[1] / "fedseqrec"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "TEST_ONLY" not in text and 'os.environ.get("FEDSEQREC_TEST' not in text, path


def test_tiny_flags_still_parse_with_audit_options(cli, tmp_path):
    result = cli("simulate", *TINY_FLAGS, "--audit-canaries", "-1", "--out", tmp_path / "x")
    assert result.code == 2 and "--audit-canaries" in result.err


@pytest.mark.slow
def test_the_federation_wide_mechanism_is_audited_against_its_own_claim(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "simulate",
        *TINY_FLAGS,
        "--rounds",
        "2",
        "--privacy",
        "user-level",
        "--users-per-round",
        "40",
        "--noise-multiplier",
        "1.0",
        "--audit-canaries",
        "40",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    found = json.loads((out / "audit.json").read_text())
    report = json.loads((out / "privacy_report.json").read_text())
    assert found["claimed"]["epsilon"] == pytest.approx(report["max_epsilon"]) and found["consistent"] is True
    assert found["claimed"]["mechanism"] == report["mechanism"] and "user-level" in report["mechanism"]
    assert (out / "audit_coins.json").is_file() and (out / "audit.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "privacy",
    [
        [],
        ["--privacy", "dp-fedavg", "--central-noise", "1.0", "--clients-per-round", "2", "--clipping-norm", "0.5"],
        ["--privacy", "user-level", "--users-per-round", "40", "--epsilon", "4"],  # the crash: δ was None
    ],
    ids=["none", "dp-fedavg", "user-level with an epsilon target"],
)
def test_the_audit_runs_after_every_mechanism(cli, tmp_path, privacy):
    """(DP-SGD: above; train: the first test.) Each mechanism's run ends with its audit, against its own claim."""
    out = tmp_path / "run"
    result = cli("simulate", *TINY_FLAGS, "--rounds", "2", *privacy, "--audit-canaries", "40", "--out", out)
    assert result.code == 0, result.err
    found = json.loads((out / "audit.json").read_text())
    assert "empirical ε ≥" in result.out and 0.0 <= found["canaries"]["auc"] <= 1.0
    if not privacy:
        assert found["claimed"]["epsilon"] is None and found["consistent"] is None
        return
    report = json.loads((out / "privacy_report.json").read_text())
    assert found["claimed"]["epsilon"] == pytest.approx(report["max_epsilon"]) and found["consistent"] is True
    assert found["claimed"]["delta"] == pytest.approx(report["delta"])
    overlap = report["users_in_several_clients"]  # what a user held by several clients gets, for this mechanism
    assert overlap.startswith("each silo clips" if "user-level" in privacy else "the unit is one client's update")
