"""The co-occurrence model and its private release: hand-counted pairs, the sensitivity of one user, rows not chosen
left out, ε against an independent accountant, and a model that beats popularity on planted pairs."""

import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TINY, independent_epsilons

from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate, popularity_baseline
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.task import cached_dataset
from fedseqrec.models import cooccurrence
from fedseqrec.models.base import SeqBatch
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.cooccurrence import ItemCooccurrence, pair_table, user_pairs
from fedseqrec.privacy import cooccurrence as private_cooc
from fedseqrec.privacy.cooccurrence import (
    clipped_pair_sum,
    private_cooccurrence,
    public_supported_cooccurrence,
    support_pair_sum,
)
from fedseqrec.privacy.cooccurrence_options import CooccurrenceConfig, default_items
from fedseqrec.privacy.public import public_users
from fedseqrec.serving.recommender import load_recommender


def config(seq) -> ModelConfig:
    return ModelConfig(name="cooc", n_items=seq.n_items)


def as_dict(pairs, weights) -> dict:
    return {(int(a), int(b)): float(w) for (a, b), w in zip(pairs, weights, strict=True)}


def test_pairs_are_counted_by_hand():
    # d = 1: (3,5) (5,3) (3,7); d = 2: (3,3) counts nothing, (5,7) at 0.5
    assert as_dict(*user_pairs(np.array([3, 5, 3, 7]), window=2, decay=0.5)) == {
        (3, 5): 2.0,
        (3, 7): 1.0,
        (5, 7): 0.5,
    }
    # a left-out event (0) keeps its place: 3 and 5 are two apart, and nothing pairs with it
    assert as_dict(*user_pairs(np.array([3, 0, 5]), window=1)) == {}
    assert as_dict(*user_pairs(np.array([3, 0, 5]), window=2, decay=0.5)) == {(3, 5): 0.5}
    assert user_pairs(np.array([4]), window=5)[0].shape == (0, 2)


def without(split: Split, user: int) -> Split:
    """The split with ``user``'s history gone (their training events left out)."""
    train_end = split.train_end.copy()
    train_end[user] = 0
    return replace(split, train_end=train_end)


def test_adding_or_removing_one_user_moves_the_sum_by_at_most_one():
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    chosen = np.arange(1, seq.n_items + 1, 2)  # every other item: pairs of left-out items count nothing
    users = np.arange(1, seq.n_users + 1)
    total, largest = clipped_pair_sum(seq, split, users, chosen, window=5)
    assert largest > 1.0  # some user's pairs are clipped: the bound is tested where it binds
    assert np.allclose(total, np.triu(total))
    for user in (1, 7, 30, 77):
        change = total - clipped_pair_sum(seq, without(split, user), users, chosen, window=5)[0]
        history = seq.sequence(user)[: split.train_end[user]]
        kept = np.where(np.isin(history, chosen), history, 0)
        _, weights = user_pairs(kept, 5)
        own = min(float(np.sqrt((weights**2).sum())), 1.0)
        assert np.linalg.norm(change) == pytest.approx(own, abs=1e-9) and np.linalg.norm(change) <= 1.0 + 1e-9


def test_items_not_chosen_get_no_pair_and_no_noise():
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    model, record = private_cooccurrence(seq, split, 8.0, 1e-5, items=20, window=5, cfg=config(seq))
    pairs, _ = model.dense()
    assert record["item_selection"]["count"] == 20 and len(model.rows) == 20 and pairs.shape == (20, 20)
    assert torch.equal(pairs, pairs.T) and torch.all(torch.diag(pairs) == 0)
    assert len(model.value) == 20 * 19 // 2  # every pair of chosen items is noised, none other is kept
    others = np.setdiff1d(np.arange(1, seq.n_items + 1), model.rows.numpy())
    history = torch.tensor([[int(model.rows[0]), int(others[0]), int(model.rows[3])]])
    batch = SeqBatch(history, torch.zeros_like(history), torch.zeros_like(history), torch.tensor([3]))
    scores = model.full_sort_predict(batch)[0].numpy()
    assert np.all(scores[others] == 0.0)  # no prior, no pair, no noise: they score nothing
    assert np.any(scores[model.rows.numpy()] != 0.0)


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_its_two_releases_compose_and_recheck_with_an_independent_accountant(target):
    ds = cached_dataset(TINY.data)
    _, record = private_cooccurrence(ds.sequences, ds.split, target, 1e-5, items=20, window=5, cfg=config(ds.sequences))
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in record["ledger"]]
    assert len(records) == 2 and records[0][0] == pytest.approx(10.0 / target)
    assert record["max_epsilon"] <= target * 1.001
    rdp, pld = independent_epsilons(records, 1e-5)
    assert record["max_epsilon"] == pytest.approx(rdp, rel=0.01) and record["max_epsilon"] >= pld * 0.99


def test_the_noise_does_not_follow_the_seed():
    ds = cached_dataset(TINY.data)
    first, _ = private_cooccurrence(ds.sequences, ds.split, 8.0, 1e-5, items=20, window=5, cfg=config(ds.sequences))
    second, _ = private_cooccurrence(ds.sequences, ds.split, 8.0, 1e-5, items=20, window=5, cfg=config(ds.sequences))
    assert not np.array_equal(first.value.numpy(), second.value.numpy())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """400 users whose histories are pairs of items bought one after the other (2k - 1 then 2k, 30 pairs), the
    first item of each pair far more popular than the second: popularity ranks the wrong half."""
    rng = np.random.default_rng(0)
    lines = []
    for user in range(1, 401):
        chosen = rng.choice(30, size=4, replace=False, p=np.linspace(2, 1, 30) / np.linspace(2, 1, 30).sum())
        items = [i for p in chosen for i in (2 * p + 1, 2 * p + 2)]
        items += [int(rng.integers(1, 31)) * 2 - 1 for _ in range(3)]  # first halves again: popular, unpaired
        items += [2 * int(chosen[0]) + 1, 2 * int(chosen[0]) + 2]  # the last two: a pair (the test target)
        lines.append(" ".join(map(str, [user, *items])))
    path = tmp_path_factory.mktemp("planted") / "planted.txt"
    path.write_text("\n".join(lines) + "\n")
    return cached_dataset(RunConfig.of(data=str(path), clients=2).data)


def test_counted_and_private_models_beat_popularity_on_planted_pairs(planted):
    seq, split = planted.sequences, planted.split
    histories = [seq.sequence(u)[: split.train_end[u]] for u in range(1, seq.n_users + 1)]
    plain = ItemCooccurrence.counted(config(seq), histories, 5, np.zeros(seq.n_items + 1))
    private, _ = private_cooccurrence(seq, split, 8.0, 1e-4, items=60, window=5, cfg=config(seq))
    pop = popularity_baseline(seq, split, 50, "full")["test"]["NDCG@10"]
    plain_ndcg = evaluate(plain, seq, split, "test")["NDCG@10"]
    private_ndcg = evaluate(private, seq, split, "test")["NDCG@10"]
    assert pop < 0.1 and plain_ndcg > 0.9  # the partner of the last item, which popularity ranks low
    assert private_ndcg > 0.8  # measured: 0.95 (σ ≈ 0.6 at ε = 8 against pairs of ~15 users)


def test_train_cooc_with_an_epsilon_writes_its_privacy_record(cli, tmp_path):
    result = cli(
        "train", "--shop-users", "120", "--model", "cooc", "--cooc-epsilon", "4", "--cooc-items", "30",
        "--out", tmp_path / "cooc",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "cooc" / "privacy_report.json").read_text())
    assert report["max_epsilon"] <= 4.0 and [r["round"] for r in report["ledger"]] == [0, 1]
    metrics = json.loads((tmp_path / "cooc" / "metrics.json").read_text())
    assert metrics["model"] == "cooc" and metrics["privacy"]["item_selection"]["count"] == 30
    assert 0.0 <= metrics["test"]["NDCG@10"] <= 1.0


def test_a_private_release_is_saved_and_served_as_it_scored(cli, tmp_path):
    out = tmp_path / "served"
    result = cli(
        "train", "--shop-users", "120", "--model", "cooc", "--cooc-epsilon", "8", "--cooc-items", "30", "--out", out
    )
    assert result.code == 0, result.err
    recommender = load_recommender(out)
    model, ds = recommender.model, recommender.ds
    assert len(model.rows) == 30 and len(model.value) == 30 * 29 // 2  # the release, whole
    history = ds.sequences.sequence(5)[: ds.split.train_end[5]]
    tokens = [str(recommender.tokens[i]) for i in history]
    found = recommender.recommend(tokens, k=5)
    batch = SeqBatch(*(torch.from_numpy(history[None]),) * 3, torch.tensor([len(history)]))
    scores = model.full_sort_predict(batch)[0]
    scores[torch.from_numpy(np.unique(history))] = -float("inf")  # seen items are not recommended
    assert found.items == [str(recommender.tokens[i]) for i in torch.topk(scores, 5).indices.tolist()]
    assert recommender.describe()["privacy"]["max_epsilon"] <= 8.0
    with pytest.raises(UserError, match="--int8: a cooc model has no trained weights"):
        load_recommender(out, int8=True)


def test_a_large_sparse_table_scores_as_its_dense_twin(monkeypatch):
    n_items = 40
    pairs = dict(first=[3, 4, 9, 1], second=[9, 7, 12, 3], value=[1.0, 2.0, 0.5, 0.25])
    model = ItemCooccurrence(ModelConfig(name="cooc", n_items=n_items), np.arange(n_items + 1), **pairs,
                             prior=np.arange(n_items + 1) * 1e-3)  # fmt: skip
    batch = SeqBatch(*(torch.tensor([[3, 9, 4, 0], [7, 0, 0, 0]]),) * 3, torch.tensor([3, 1]))
    dense = model.full_sort_predict(batch)
    assert dense[0, 12] == pytest.approx(0.5 * 0.6 + 0.012) and dense[1, 4] == pytest.approx(2.0 + 0.004)
    monkeypatch.setattr(cooccurrence, "DENSE_ROWS", 0)
    model.load_state_dict(model.state_dict())  # new counts: the table is built again, sparse this time
    assert model.dense()[0].layout == torch.sparse_csr
    assert torch.allclose(model.full_sort_predict(batch), dense)


def test_too_many_items_for_a_dense_release_are_refused_before_any_work():
    ds = cached_dataset(TINY.data)
    with pytest.raises(UserError, match="--cooc-items 20000: the release noises every pair"):
        private_cooccurrence(ds.sequences, ds.split, 8.0, 1e-5, items=20_000, window=5, cfg=config(ds.sequences))


def public_release(ds, target=8.0, share=0.2):
    return public_supported_cooccurrence(ds.sequences, ds.split, target, 1e-5, share, 0, 5, config(ds.sequences))


def public_table(ds, share=0.2):
    seq, split = ds.sequences, ds.split
    public = public_users(seq.n_users, share, 0)
    return pair_table((seq.sequence(u)[: split.train_end[u]] for u in public), 5, seq.n_items + 1).tocoo()


def test_public_users_choose_the_released_pairs_and_each_gets_noise(monkeypatch):
    monkeypatch.setattr(private_cooc, "PRIVATE_WEIGHTS", (1.0,))  # the release added as it is
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    model, record, public_only = public_release(ds)
    table = public_table(ds)
    # the released pairs are exactly the public users' pairs: no other pair is kept, and the public counts are exact
    for released in (model, public_only):
        assert np.array_equal(released.first.numpy(), table.row) and np.array_equal(released.second.numpy(), table.col)
    assert np.allclose(public_only.value.numpy(), table.data, rtol=1e-6)
    assert record["released_pairs"] == len(table.data) > 200
    # what the private users add is their clipped sum plus noise σ on every released pair
    keys = table.row.astype(np.int64) * (seq.n_items + 1) + table.col
    private = np.setdiff1d(np.arange(1, seq.n_users + 1), public_users(seq.n_users, 0.2, 0))
    clipped, _ = support_pair_sum(seq, split, private, keys, 5)
    noise = model.value.numpy() - public_only.value.numpy() - clipped
    sigma = record["noise_multiplier"]
    assert np.all(noise != 0.0) and abs(noise.mean()) < 4 * sigma / np.sqrt(len(noise))
    assert noise.std() == pytest.approx(sigma, rel=4 / np.sqrt(len(noise)))


def test_one_private_user_moves_the_public_pairs_release_by_at_most_one():
    ds = cached_dataset(TINY.data)
    seq, split = ds.sequences, ds.split
    table = public_table(ds)
    keys = table.row.astype(np.int64) * (seq.n_items + 1) + table.col
    users = np.setdiff1d(np.arange(1, seq.n_users + 1), public_users(seq.n_users, 0.2, 0))
    total, largest = support_pair_sum(seq, split, users, keys, 5)
    assert largest > 1.0  # the bound binds for some user
    released = set(keys.tolist())
    for user in users[[0, 5, 40, -1]]:
        change = total - support_pair_sum(seq, without(split, int(user)), users, keys, 5)[0]
        pairs, weights = user_pairs(seq.sequence(int(user))[: split.train_end[int(user)]], 5)
        inside = np.array([a * (seq.n_items + 1) + b in released for a, b in pairs], dtype=bool)
        own = min(float(np.sqrt((weights[inside] ** 2).sum())), 1.0)  # pairs outside are left out before scaling
        assert np.linalg.norm(change) == pytest.approx(own, abs=1e-9) and np.linalg.norm(change) <= 1.0 + 1e-9


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_the_public_pairs_release_is_one_record_that_rechecks(target):
    _, record, _ = public_release(cached_dataset(TINY.data), target)
    records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in record["ledger"]]
    assert len(records) == 1 and record["max_epsilon"] <= target * 1.001
    rdp, pld = independent_epsilons(records, 1e-5)
    assert record["max_epsilon"] == pytest.approx(rdp, rel=0.01) and record["max_epsilon"] >= pld * 0.99


def test_train_cooc_with_public_users_reports_them_and_their_model(cli, tmp_path):
    args = ["train", "--shop-users", "120", "--model", "cooc", "--cooc-public-users", "0.25"]
    refused = cli(*args, "--out", tmp_path / "no-epsilon")
    assert refused.code == 2 and "without --cooc-epsilon nothing is private" in refused.err
    assert not (tmp_path / "no-epsilon").exists()
    result = cli(*args, "--cooc-epsilon", "4", "--out", tmp_path / "cooc")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "cooc" / "privacy_report.json").read_text())
    assert report["public_users"]["count"] == 30 and report["max_epsilon"] <= 4.0 and len(report["ledger"]) == 1
    metrics = json.loads((tmp_path / "cooc" / "metrics.json").read_text())
    assert set(metrics["initial"]) == {"valid", "test"}  # the public users' model alone, beside the release
    assert 0.0 <= metrics["initial"]["test"]["NDCG@10"] <= 1.0


def test_the_private_users_weight_is_chosen_on_the_public_users_validation_items(planted):
    seq, split = planted.sequences, planted.split
    public = public_users(seq.n_users, 0.25, 0)
    release = functools.partial(public_supported_cooccurrence, seq, split, delta=1e-4, public_share=0.25, seed=0,
                                window=5, cfg=config(seq))  # fmt: skip
    model, record, alone = release(2.0)
    weight = record["private_weight"]
    scores = {float(w): v for w, v in weight["valid_scores"].items()}
    assert set(scores) == set(private_cooc.PRIVATE_WEIGHTS) and weight["chosen"] == max(scores, key=scores.get)
    mine = evaluate(model, seq, split, "valid", users=public)["NDCG@10"]
    assert mine == pytest.approx(scores[weight["chosen"]], abs=1e-6)
    # the weight 0 is the public users' model itself: the release is never kept where it ranks them worse
    assert evaluate(alone, seq, split, "valid", users=public)["NDCG@10"] == pytest.approx(scores[0.0], abs=1e-6)
    assert scores[weight["chosen"]] >= scores[0.0]


def test_the_default_number_of_items_follows_epsilon():
    """250 × ε items, from 125 to 2,000 (chosen on Beauty's and ml-100k's validation); --cooc-items overrides."""
    assert [default_items(e) for e in (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)] == [125, 125, 250, 500, 1000, 2000, 2000]
    assert CooccurrenceConfig(cooc_epsilon=1.0).items() == 250
    assert CooccurrenceConfig(cooc_epsilon=1.0, cooc_items=30).items() == 30
