"""What keeps the noise of federation-wide user-level DP small without weakening the claim: local steps per user
(user-level DP-FedAvg), per-layer clipping, the sampled loss, users declared public and frozen item tables. Each
must keep one user's effect on the pre-noise sum within C, on the real code path."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY, TINY_FLAGS, flat, independent_epsilons, model_and_windows

from fedseqrec.federated.task import build_global_model, cached_dataset, load_client_data
from fedseqrec.models.base import SequenceLoss
from fedseqrec.privacy.per_user import Contribution, clipped_update_sum
from fedseqrec.privacy.public import private_users, public_users
from fedseqrec.privacy.user_level import private_part, trainable
from fedseqrec.simulation.engine import simulate


@pytest.mark.parametrize("options", [{}, {"tie_items": True}])
def test_local_steps_contribute_the_mean_gradient_along_the_users_own_steps(options):
    model, windows = model_and_windows("sasrec", **options)
    steps, lr, user = 3, 0.5, 4
    total, norms, _ = clipped_update_sum(model, windows, np.array([user]), Contribution(1e6, steps, lr))
    start = {n: p.detach().clone() for n, p in trainable(model).items()}
    optimizer = torch.optim.SGD(trainable(model).values(), lr=lr)
    batch = windows.batch_of([t.unsqueeze(0) for t in windows[user]])
    for _ in range(steps):  # the same user alone, plain autograd and torch's SGD
        optimizer.zero_grad()
        model.calculate_loss(batch, SequenceLoss(model.cfg.label_smoothing)).backward()
        optimizer.step()
    expected = {n: (start[n] - p.detach()) / (steps * lr) for n, p in trainable(model).items()}
    for n in expected:
        assert torch.allclose(total[n], expected[n], atol=1e-5), n
    assert norms[0] == pytest.approx(flat(expected).norm().item(), rel=1e-4)
    one_step, _, _ = clipped_update_sum(model, windows, np.array([user]), Contribution(1e6, 1))
    assert not torch.allclose(flat(one_step), flat(expected), atol=1e-4)  # the steps matter


@pytest.mark.parametrize(
    ("name", "rule", "options"),
    [
        ("sasrec", Contribution(0.05, steps=4, lr=0.5), {}),
        ("gru4rec", Contribution(0.05, steps=2, lr=0.5), {}),
        ("sasrec", Contribution(0.05, clipping="per-layer"), {}),
        ("lstm", Contribution(0.05, clipping="per-layer", steps=2), {}),
        ("sasrec", Contribution(0.05), {"loss": "sampled", "negatives": 10}),
        ("sasrec", Contribution(0.05, steps=2), {"freeze": "items"}),
        ("gru4rec", Contribution(0.05, steps=2), {"tie_items": True}),
    ],
)
def test_removing_one_user_moves_the_sum_by_at_most_the_clipping_norm(name, rule, options):
    model, windows = model_and_windows(name, **options)
    chosen = np.arange(6)
    everyone, norms, _ = clipped_update_sum(model, windows, chosen, rule)
    assert (norms > rule.clip).all()
    if options.get("loss") == "sampled":
        # Each user draws their own negatives, so two passes differ in every user's term: what holds on the code
        # path is that each user's own term never exceeds C.
        for user in range(4):
            alone, _, _ = clipped_update_sum(model, windows, np.array([user]), rule)
            assert flat(alone).norm().item() <= rule.clip * 1.001
        return
    for leave_out in (0, 3):
        rest, _, _ = clipped_update_sum(model, windows, np.delete(chosen, leave_out), rule)
        change = (flat(everyone) - flat(rest)).norm().item()
        if rule.clipping == "flat":
            assert change == pytest.approx(rule.clip, rel=1e-3)  # clipped as a whole: exactly C
        else:
            assert rule.clip * 0.5 < change <= rule.clip * 1.001  # per layer: each layer at most its budget


def test_per_layer_budgets_add_up_to_the_clipping_norm_and_bind_each_layer():
    model, windows = model_and_windows("sasrec")
    rule = Contribution(0.05, clipping="per-layer")
    alone, _, _ = clipped_update_sum(model, windows, np.array([2]), rule)
    layers: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for n, t in alone.items():
        layer = ".".join(n.split(".")[:2]) if n.startswith("blocks.") else n.split(".")[0]
        layers[layer] = layers.get(layer, 0.0) + float((t**2).sum())
        sizes[layer] = sizes.get(layer, 0) + t.numel()
    total = sum(sizes.values())
    assert {"item_embedding", "blocks.0", "scorer"} <= set(layers)
    for layer, square in layers.items():
        assert square**0.5 <= 0.05 * (sizes[layer] / total) ** 0.5 * 1.001, layer
    assert sum(layers.values()) ** 0.5 <= 0.05 * 1.001


def test_frozen_item_tables_are_left_out_of_every_contribution():
    model, windows = model_and_windows("sasrec", freeze="items")
    total, _, _ = clipped_update_sum(model, windows, np.arange(5), Contribution(1.0))
    assert not any(n.startswith(("item_embedding", "scorer")) for n in total)
    assert set(total) == set(trainable(model)) and "blocks.0.attention.query.weight" in total


def test_public_users_are_drawn_by_the_seed_and_left_out_of_every_silo():
    first, again, other = public_users(500, 0.1, 0), public_users(500, 0.1, 0), public_users(500, 0.1, 1)
    assert len(first) == 50 and np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.min() >= 1 and first.max() <= 500
    users = np.arange(1, 501)
    assert len(private_users(users, 500, 0.1, 0)) == 450 and private_users(users, 500, 0.0, 0) is users
    cfg = TINY.replace(mechanism="user-level", users_per_round=40, noise_multiplier=1.0, public_users=0.25)
    n_users = cached_dataset(cfg.data).sequences.n_users
    public = set(public_users(n_users, 0.25, cfg.data.seed).tolist())
    kept = [private_part(load_client_data(cfg, c, 3), cfg.privacy, cfg.data.seed).users for c in range(3)]
    assert not public & set(np.concatenate(kept).tolist())
    assert sum(len(k) for k in kept) == n_users - len(public)


@pytest.mark.slow
def test_a_run_with_public_users_pretrains_freezes_and_says_who_is_covered(tmp_path):
    cfg = TINY.replace(
        mechanism="user-level",
        users_per_round=40,
        noise_multiplier=1.0,
        rounds=2,
        public_users=0.25,
        public_epochs=2,
        freeze="items",
        user_steps=2,
        clipping="per-layer",
    )
    ds = cached_dataset(cfg.data)
    torch.manual_seed(cfg.data.seed)
    untrained = build_global_model(ds.sequences, cfg.model).state_dict()
    results, folder = simulate(cfg, out=tmp_path / "run")
    initial = torch.load(folder.path / "model_initial.pt", weights_only=True)
    assert set(results["initial"]) == {"valid", "test"} and 0 <= results["initial"]["test"]["NDCG@10"] <= 1
    final = torch.load(folder.path / "model.pt", weights_only=True)
    final = final.get("state_dict", final)
    assert not torch.allclose(initial["item_embedding.weight"], untrained["item_embedding.weight"])  # pretrained
    for table in ("item_embedding.weight", "scorer.weight", "scorer.bias"):  # frozen in the private rounds
        assert torch.equal(final[table], initial[table]), table
    assert not torch.equal(final["blocks.0.attention.query.weight"], initial["blocks.0.attention.query.weight"])
    report = json.loads((folder.path / "privacy_report.json").read_text())
    n_public = int(0.25 * ds.sequences.n_users)
    assert report["public_users"]["count"] == n_public and "not covered" in report["public_users"]["use"]
    assert f"except the {n_public} users declared public" in report["privacy_unit"]
    assert report["clients"][0]["ledger"][0]["sample_rate"] == pytest.approx(40 / (ds.sequences.n_users - n_public))
    assert "DP-FedAvg" in report["mechanism"] and "per layer" in report["mechanism"]
    assert (folder.path / "privacy_report.md").read_text().count("**users declared public: ") == 1


def test_a_tied_model_trains_under_user_level_dp(tmp_path):
    cfg = TINY.replace(mechanism="user-level", users_per_round=40, noise_multiplier=1.0, rounds=1, tie_items=True)
    torch.manual_seed(cfg.data.seed)
    initial = build_global_model(cached_dataset(cfg.data).sequences, cfg.model).state_dict()
    results, folder = simulate(cfg, out=tmp_path / "run")
    final = torch.load(folder.path / "model.pt", weights_only=True)
    final = final.get("state_dict", final)
    assert "scorer.weight" not in final  # one table, trained through both of its uses
    assert not torch.equal(final["item_embedding.weight"], initial["item_embedding.weight"])
    assert 0 <= results["test"]["NDCG@10"] <= 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--public-users", "0.1"], "--public-users needs --privacy user-level"),
        (["--user-steps", "3"], "--user-steps needs --privacy user-level"),
        (
            ["--privacy", "user-level", "--epsilon", "2", "--users-per-round", "10", "--public-users", "1"],
            "must be in [0, 1)",
        ),
    ],
)
def test_bad_contribution_options(cli, tmp_path, flags, message):
    result = cli("simulate", *TINY_FLAGS, *flags, "--out", tmp_path / "run")
    assert result.code == 2 and message in result.err and "Traceback" not in result.err


def test_adaptive_clipping_charges_the_pair_of_releases_as_the_accounted_sigma():
    from fedseqrec.errors import UserError
    from fedseqrec.privacy.adaptive_clip import sum_noise_multiplier

    for sigma, count_noise in [(1.0, 15.0), (2.65, 15.0), (0.9, 100.0), (3.0, 1.6)]:
        sum_noise = sum_noise_multiplier(sigma, count_noise)
        assert sum_noise > sigma
        assert (sum_noise**-2 + (2 * count_noise) ** -2) ** -0.5 == pytest.approx(sigma, rel=1e-12)
    with pytest.raises(UserError, match="twice the count's noise"):
        sum_noise_multiplier(3.0, 1.5)


def test_adaptive_clipping_moves_the_norm_towards_the_quantile():
    from fedseqrec.privacy.adaptive_clip import QuantileClip

    clip = QuantileClip(clip=1.0, quantile=0.5, lr=0.2, expected_users=100.0)
    assert clip.update(noisy_count=50.0) == pytest.approx(1.0)  # everyone unclipped: share 1, C shrinks
    assert clip.clip == pytest.approx(np.exp(-0.2 * 0.5))
    before = clip.clip
    assert clip.update(noisy_count=-50.0) == pytest.approx(0.0)  # everyone clipped: C grows back
    assert clip.clip == pytest.approx(before * np.exp(0.2 * 0.5))
    clip.update(noisy_count=0.0)  # half and half: C stays
    assert clip.clip == pytest.approx(before * np.exp(0.2 * 0.5))


def test_a_silo_counts_its_unclipped_users_centred():
    model, windows = model_and_windows("sasrec")
    from fedseqrec.privacy.user_level import silo_contribution

    huge = silo_contribution(model, windows, rate=1.0, rule=Contribution(1e9), noise_std=0.0)
    tiny = silo_contribution(model, windows, rate=1.0, rule=Contribution(1e-9), noise_std=0.0)
    assert huge.unclipped == pytest.approx(huge.sampled / 2) and tiny.unclipped == pytest.approx(-tiny.sampled / 2)
    shares = [
        silo_contribution(model, windows, 0.0, Contribution(1.0), 0.0, count_noise_std=2.0).unclipped
        for _ in range(4000)
    ]
    assert np.std(shares) == pytest.approx(2.0, rel=0.05) and abs(np.mean(shares)) < 5 * 2.0 / 4000**0.5


@pytest.mark.slow
def test_an_adaptive_run_records_each_rounds_norm_and_resumes_from_it(tmp_path, cli):
    cfg = TINY.replace(
        mechanism="user-level",
        users_per_round=60,
        noise_multiplier=1.0,
        rounds=3,
        clip_quantile=0.5,
        max_grad_norm=0.05,
    )
    _, folder = simulate(cfg, out=tmp_path / "run")
    history = json.loads((folder.path / "privacy.json").read_text())["history"]
    assert history[0]["clip"] == 0.05
    for before, after in zip(history, history[1:], strict=False):
        assert after["clip"] == pytest.approx(before["next_clip"])
    report = json.loads((folder.path / "privacy_report.json").read_text())
    assert "C adaptive from 0.05" in report["mechanism"]
    rdp, _ = independent_epsilons([(1.0, 60 / 120, 3)], report["delta"])  # the pair is charged as σ
    assert report["max_epsilon"] == pytest.approx(rdp, rel=0.01)
    result = cli("simulate", "--resume", folder.path, "--rounds", "4")
    assert result.code == 0, result.err
    resumed = json.loads((folder.path / "privacy.json").read_text())["history"]
    assert resumed[:3] == history and resumed[3]["clip"] == pytest.approx(history[2]["next_clip"])


def test_pretraining_keeps_the_epoch_that_ranks_the_public_users_validation_items_best():
    from fedseqrec.evaluation.evaluator import evaluate
    from fedseqrec.privacy.public import pretrain_on_public

    cfg = TINY.replace(public_users=0.5)
    ds = cached_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, cfg.replace(freeze="items").model)
    users = public_users(ds.sequences.n_users, 0.5, 0)
    untrained = model.item_embedding.weight.detach().clone()
    done = pretrain_on_public(model, ds.sequences, ds.split, users, cfg.fit, epochs=6, seed=0)
    assert 1 <= done.best_epoch <= done.epochs <= 6
    model.eval()
    again = evaluate(model, ds.sequences, ds.split, "valid", users=users, max_len=cfg.model.max_len)["NDCG@10"]
    assert again == pytest.approx(done.valid_score, rel=1e-6)  # the weights kept are the epoch's that scored it
    assert not torch.equal(model.item_embedding.weight, untrained)  # frozen tables are pretrained too …
    assert not model.item_embedding.weight.requires_grad  # … and frozen again
