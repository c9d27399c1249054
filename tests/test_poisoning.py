"""The shilling attack: fake users whose histories push a target item — added to the data, never evaluated, and
effective (a model trained on them recommends the target far more often); the target item's HR@10 by hand."""

import numpy as np
import pytest
import torch

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.poisoning import fake_user_ids
from fedseqrec.data.shop import ShopConfig
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import item_exposure
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.models.config import ModelConfig

SHOP = {"shop": ShopConfig(users=300, items=120, categories=6, days=20)}


def test_fake_users_push_the_target_and_hold_no_evaluation_target():
    clean = load_dataset(DataConfig(**SHOP))
    ds = load_dataset(DataConfig(**SHOP, fake_users=0.05))
    attack = ds.options["poisoning"]
    assert attack["fake_users"] == 15 and ds.sequences.n_users == clean.sequences.n_users + 15
    fakes = fake_user_ids(ds.sequences.vocab.users)
    target = int(np.flatnonzero(ds.sequences.vocab.items == attack["target_item"])[0])
    for user in fakes:
        sequence = ds.sequences.sequence(user)
        assert (sequence[1::2] == target).all() and (sequence[0::2] != target).all()
        assert ds.split.train_end[user] == len(sequence)
    assert (ds.split.valid_pos[fakes] == -1).all() and (ds.split.test_pos[fakes] == -1).all()
    assert ds.split.n_test == clean.split.n_test  # every metric stays over the real users
    assert load_dataset(DataConfig(**SHOP, fake_users=0.05)).options["poisoning"] == attack  # drawn by the seed
    popularity = np.bincount(clean.sequences.items, minlength=clean.sequences.n_items + 1)
    clean_target = int(np.flatnonzero(clean.sequences.vocab.items == attack["target_item"])[0])
    assert popularity[clean_target] <= np.median(popularity[1:])  # from the less popular half


def test_poisoning_options_are_checked():
    with pytest.raises(UserError, match="is not an item of the data"):
        load_dataset(DataConfig(**SHOP, fake_users=0.05, target_item="no-such-item"))
    with pytest.raises(UserError, match="--target-item needs --fake-users"):
        load_dataset(DataConfig(**SHOP, target_item="x"))
    with pytest.raises(UserError, match="is no fake user"):
        load_dataset(DataConfig(**SHOP, fake_users=0.001))


class Scores(torch.nn.Module):
    """A model that scores every item the same for every user: item ids as scores (higher id ranks first)."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items

    def full_sort_predict(self, batch):
        return torch.arange(self.n_items + 1, dtype=torch.float32).repeat(len(batch.items), 1)


def test_target_item_exposure_by_hand():
    ds = load_dataset(DataConfig(**SHOP))
    data, split = ds.sequences, ds.split
    model = Scores(data.n_items)
    users = np.flatnonzero(split.test_pos >= 0)
    top = data.n_items  # the highest id ranks first for everyone who never had it
    had = sum(top in data.sequence(u)[: split.test_pos[u]] for u in users)
    assert item_exposure(model, data, split, top) == {"target_HR@10": 1.0, "users": len(users) - had}
    # the 11th highest id: in the top 10 only of the users who had one of the ten above it (removed from theirs)
    eleventh = data.n_items - 10
    expected = [u for u in users if eleventh not in data.sequence(u)[: split.test_pos[u]]]
    above = set(range(eleventh + 1, data.n_items + 1))
    hits = [u for u in expected if above & set(data.sequence(u)[: split.test_pos[u]].tolist())]
    assert item_exposure(model, data, split, eleventh)["target_HR@10"] == pytest.approx(len(hits) / len(expected))


@pytest.mark.slow
def test_the_attack_raises_the_targets_exposure(tmp_path):
    model = ModelConfig(hidden=16, layers=1, heads=1, inner=32, max_len=20)
    fit = TrainConfig(epochs=15, patience=15, lr=0.005, weight_decay=0.0)
    poisoned = train_centralized(DataConfig(**SHOP, fake_users=0.05), model, fit, tmp_path / "poisoned")
    without = train_centralized(DataConfig(**SHOP), model, fit, tmp_path / "clean")
    assert "poisoning" not in without
    ds = load_dataset(DataConfig(**SHOP))
    item = int(np.flatnonzero(ds.sequences.vocab.items == poisoned["poisoning"]["target_item"])[0])
    _, clean_model = load_checkpoint(tmp_path / "clean", ds.sequences)
    base = item_exposure(clean_model, ds.sequences, ds.split, item, max_len=20)
    assert poisoned["poisoning"]["users"] == base["users"]  # the same real users, the same target
    assert poisoned["poisoning"]["target_HR@10"] > base["target_HR@10"] + 0.2
