"""Partition invariants: disjoint, complete, deterministic by seed; and the shape of each scheme."""

import numpy as np
import pytest

from fedseqrec.data import DataConfig, ShopConfig, load_dataset
from fedseqrec.data.partition import category_skew, dominant_categories, partition_users
from fedseqrec.errors import UserError

SMALL_SHOP = ShopConfig(users=300, items=200, categories=10)


@pytest.fixture(scope="module")
def shop():
    return load_dataset(DataConfig(shop=SMALL_SHOP)).sequences


CASES = [
    ("per-user", {}),
    ("iid", {"clients": 7}),
    ("dirichlet", {"clients": 7, "alpha": 0.1}),
    ("attribute", {}),
    ("attribute", {"clients": 3}),
]


@pytest.mark.parametrize(("scheme", "kwargs"), CASES)
def test_disjoint_complete_and_deterministic(shop, scheme, kwargs):
    part = partition_users(shop, scheme, seed=3, **kwargs)
    assert part.client_of_user[0] == -1 and part.client_of_user.shape == (shop.n_users + 1,)
    clients = part.clients()
    everyone = np.concatenate(clients)
    assert len(everyone) == shop.n_users == len(set(everyone.tolist()))  # disjoint and complete
    assert set(everyone.tolist()) == set(range(1, shop.n_users + 1))
    assert all(len(c) > 0 for c in clients)
    if "clients" in kwargs:
        assert part.n_clients == kwargs["clients"]
    again = partition_users(shop, scheme, seed=3, **kwargs)
    assert np.array_equal(part.client_of_user, again.client_of_user)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_seed_changes_random_partitions(shop, scheme):
    a = partition_users(shop, scheme, clients=5, seed=0).client_of_user
    b = partition_users(shop, scheme, clients=5, seed=1).client_of_user
    assert not np.array_equal(a, b)


def test_per_user_gives_one_user_per_client(shop):
    part = partition_users(shop, "per-user")
    assert part.n_clients == shop.n_users
    assert all(len(c) == 1 for c in part.clients())


def test_iid_silos_are_balanced(shop):
    sizes = [len(c) for c in partition_users(shop, "iid", clients=7).clients()]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_is_more_skewed_than_iid(shop):
    groups, column = dominant_categories(shop)
    assert column == "category"
    iid = np.mean([category_skew(partition_users(shop, "iid", clients=8, seed=s), groups) for s in range(5)])
    skewed = np.mean(
        [category_skew(partition_users(shop, "dirichlet", clients=8, alpha=0.1, seed=s), groups) for s in range(5)]
    )
    assert skewed > 2 * iid
    assert skewed > 0.3


def test_attribute_partition_by_region_and_merge(shop):
    part = partition_users(shop, "attribute")
    assert part.params["attribute"] == "region"
    assert part.client_names == ["central", "east", "north", "south", "west"]
    for k, users in enumerate(part.clients()):
        assert set(shop.user_features.loc[users, "region"]) == {part.client_names[k]}
    merged = partition_users(shop, "attribute", clients=2)
    assert merged.n_clients == 2
    assert sorted("+".join(merged.client_names).split("+")) == part.client_names


def test_ml100k_attribute_by_zip_prefix_and_occupation(ml100k):
    seq = load_dataset(DataConfig(data=str(ml100k))).sequences
    zips = partition_users(seq, "attribute", attribute="zip_code:1")
    assert all(len(name) == 1 for name in zips.client_names)
    occupations = partition_users(seq, "attribute", attribute="occupation")
    assert occupations.n_clients == seq.user_features["occupation"].nunique() == 21
    dirichlet = partition_users(seq, "dirichlet", clients=10, alpha=0.1)
    assert dirichlet.params["category"] == "class"


def test_bad_partition_requests(shop):
    with pytest.raises(UserError, match="more than the 300 users"):
        partition_users(shop, "iid", clients=301)
    with pytest.raises(UserError, match="needs --clients"):
        partition_users(shop, "iid")
    with pytest.raises(UserError, match="unknown partition"):
        partition_users(shop, "random")
    with pytest.raises(UserError, match="not found"):
        partition_users(shop, "attribute", attribute="occupation")
    with pytest.raises(UserError, match="more than the 5 distinct values"):
        partition_users(shop, "attribute", clients=6)
