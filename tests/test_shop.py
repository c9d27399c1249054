"""The embedded shop generator: seeded, realistic in shape, with structure only order can explain."""

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from fedseqrec.data import DataConfig, ShopConfig, generate_shop, load_dataset

SMALL = ShopConfig(users=400, items=300, categories=12)


@pytest.fixture(scope="module")
def log():
    return generate_shop(SMALL)


def test_same_seed_same_data_other_seed_other_data(log):
    pd.testing.assert_frame_equal(log.events, generate_shop(SMALL).events)
    other = generate_shop(ShopConfig(users=400, items=300, categories=12, seed=1))
    assert not log.events["item"].equals(other.events["item"])


def test_users_items_and_events_have_the_promised_attributes(log):
    assert set(log.user_features["region"]) == {"north", "south", "east", "west", "central"}
    assert log.item_features["category"].nunique() == 12
    assert set(log.item_features["price_band"]) <= {"cheap", "budget", "mid", "premium", "luxury"}
    assert set(log.events["event"]) == {"view", "cart", "purchase", "search"}
    searches = log.events[log.events["event"] == "search"]
    assert len(searches) > 0 and searches["query"].notna().all()
    assert log.events.loc[log.events["event"] != "search", "query"].isna().all()
    # Zipf-like popularity: the top 10% of items take a large share of views.
    counts = log.events["item"].value_counts()
    assert counts.iloc[: len(counts) // 10].sum() > 0.3 * counts.sum()


def test_every_purchase_follows_a_cart_of_the_same_item(log):
    events = log.events
    for i in np.flatnonzero(events["event"].to_numpy() == "purchase"):
        before = events.iloc[i - 1]
        assert before["event"] == "cart" and before["item"] == events.iloc[i]["item"]
        assert before["user"] == events.iloc[i]["user"] and before["timestamp"] < events.iloc[i]["timestamp"]


def test_daily_and_weekly_rhythm(log):
    times = pd.to_datetime(log.events["timestamp"], unit="s", utc=True)
    hours = times.dt.hour.value_counts()
    assert hours.reindex(range(19, 22), fill_value=0).sum() > 5 * hours.reindex(range(2, 5), fill_value=0).sum()
    per_day = times.dt.day_of_week.value_counts()
    assert per_day[[5, 6]].mean() > 1.2 * per_day[[0, 1, 2, 3]].mean()


def test_planted_order_beats_popularity():
    """A next-item model that only counts transitions (item -> next item) is far better than popularity:
    the signal is in the order, so sequence models can learn it and a popularity model cannot."""
    ds = load_dataset(DataConfig(shop=SMALL))
    seq, split = ds.sequences, ds.split
    follows: dict[int, Counter] = defaultdict(Counter)
    popularity: Counter = Counter()
    for u in range(1, seq.n_users + 1):
        train = seq.sequence(u)[: split.train_end[u]]
        popularity.update(train.tolist())
        for a, b in zip(train[:-1], train[1:], strict=True):
            follows[int(a)][int(b)] += 1
    top_pop = [i for i, _ in popularity.most_common(10)]
    hits_pop = hits_order = total = 0
    for u in range(1, seq.n_users + 1):
        pos = split.test_pos[u]
        items = seq.sequence(u)
        target, last = int(items[pos]), int(items[pos - 1])
        ranked = [i for i, _ in follows[last].most_common(10)]
        ranked += [i for i in top_pop if i not in ranked][: 10 - len(ranked)]
        hits_order += target in ranked
        hits_pop += target in top_pop
        total += 1
    assert hits_order / total > 3 * hits_pop / total
