"""Ranking metrics against hand-computed rankings, tie handling, and the combinability of sums."""

import math

import numpy as np
import pytest
import torch

from fedseqrec.data import DataConfig, ShopConfig, load_dataset
from fedseqrec.evaluation.evaluator import evaluate, evaluate_sums
from fedseqrec.evaluation.metrics import MetricSums, per_target_metrics, tie_aware_counts
from fedseqrec.models.pop import Popularity


def metrics_of(scores, targets, ks=(1, 3, 5)):
    sums = MetricSums()
    sums.add_scores(torch.tensor(scores, dtype=torch.float32), torch.tensor(targets), ks)
    return sums.result()


def test_hand_computed_ranks():
    # item 0 is padding (-inf). Row 1: target 2 ranks 2nd; row 2: target 4 ranks 4th.
    scores = [[-math.inf, 0.9, 0.5, 0.1, 0.3], [-math.inf, 0.9, 0.8, 0.7, 0.1]]
    m = metrics_of(scores, [2, 4])
    assert m["HR@1"] == 0.0 and m["HR@3"] == 0.5 and m["HR@5"] == 1.0
    assert m["NDCG@3"] == pytest.approx((1 / math.log2(3)) / 2)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)
    assert m["MRR@5"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["Recall@3"] == m["HR@3"] and m["Precision@3"] == pytest.approx(0.5 / 3)
    p, r = 1 / 3, 1.0  # row 1 at K=3
    assert m["F1@3"] == pytest.approx((2 * p * r / (p + r)) / 2)


def test_ties_never_favour_the_target():
    # Target tied with two others at the top: its rank is 1, 2 or 3 with equal chance.
    greater, equal = tie_aware_counts(torch.tensor([[-math.inf, 1.0, 1.0, 1.0, 0.0]]), torch.tensor([2]))
    assert (greater.item(), equal.item()) == (0, 2)
    m = {k: v.item() for k, v in per_target_metrics(greater, equal, (1, 2, 3)).items()}
    assert m["HR@1"] == pytest.approx(1 / 3) and m["HR@2"] == pytest.approx(2 / 3) and m["HR@3"] == 1.0
    assert m["MRR@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert m["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_constant_model_gets_chance_level():
    n_items = 1000
    scores = torch.zeros(50, n_items + 1)
    scores[:, 0] = -math.inf
    targets = torch.randint(1, n_items + 1, (50,))
    m = MetricSums()
    m.add_scores(scores, targets, (10,))
    assert m.result()["HR@10"] == pytest.approx(10 / n_items)


def test_sums_merge_exactly_not_as_average_of_averages():
    a, b = MetricSums(), MetricSums()
    a.add_scores(torch.tensor([[-math.inf, 1.0, 0.0]]), torch.tensor([1]), (1,))  # hit
    b.add_scores(torch.tensor([[-math.inf, 1.0, 0.0]] * 3), torch.tensor([2, 2, 2]), (1,))  # 3 misses
    assert a.merge(b).result()["HR@1"] == 0.25  # an average of averages would say 0.5


class RandomScores:
    def __init__(self, n_items, seed=0):
        self.n_items, self.gen = n_items, torch.Generator().manual_seed(seed)

    def full_sort_predict(self, batch):
        scores = torch.rand(batch.items.shape[0], self.n_items + 1, generator=self.gen)
        scores[:, 0] = -math.inf
        return scores


@pytest.fixture(scope="module")
def shop():
    return load_dataset(DataConfig(shop=ShopConfig(users=400, items=300, categories=10)))


def test_pop_and_random_orders_of_magnitude(shop):
    seq, split = shop.sequences, shop.split
    train = np.concatenate([seq.sequence(u)[: split.train_end[u]] for u in range(1, seq.n_users + 1)])
    pop = evaluate(Popularity(seq.n_items).fit(train), seq, split, "test")
    rand = evaluate(RandomScores(seq.n_items), seq, split, "test")
    chance = 10 / seq.n_items
    assert 0.2 * chance < rand["HR@10"] < 3 * chance  # random: chance level
    assert pop["HR@10"] > 2 * chance  # popularity: well above chance on Zipf-like data
    assert pop["NDCG@10"] < pop["HR@10"] <= pop["HR@20"]


def test_sampled_protocol_is_easier_and_labelled(shop):
    seq, split = shop.sequences, shop.split
    rand = RandomScores(seq.n_items)
    sampled = evaluate(rand, seq, split, "test", protocol="sampled-uniform")
    assert sampled["HR@10"] == pytest.approx(10 / 101, rel=0.35)  # 100 negatives + the target
    pop = evaluate_sums(RandomScores(seq.n_items), seq, split, "test", protocol="sampled-pop", negatives=50)
    assert pop.count == split.n_test
