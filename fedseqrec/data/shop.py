"""``shop``: a seeded synthetic e-commerce behaviour log, the default dataset of every command.

Users have a region and a latent taste over categories; items have a category, a price band and Zipf-like
popularity. Each user browses in sessions (view -> cart -> purchase) whose start times follow a daily and a
weekly rhythm; some sessions start from a search, whose tokens are kept in ``query``.

Planted sequential structure, learnable from order but invisible to a popularity model:
- every category has a fixed browsing chain: after viewing an item, the next view is often its successor;
- sessions stay in one category (category persistence);
- a purchase is often followed by the item's fixed complement from the next category (complementary buys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import CART, PURCHASE, SEARCH, VIEW, Interactions, make_table
from fedseqrec.errors import UserError
from fedseqrec.options import option

CATEGORIES = (
    "phones",
    "laptops",
    "audio",
    "cameras",
    "gaming",
    "books",
    "toys",
    "kitchen",
    "garden",
    "tools",
    "beauty",
    "health",
    "shoes",
    "fashion",
    "sports",
    "outdoor",
    "pets",
    "baby",
    "office",
    "grocery",
    "music",
    "movies",
    "jewelry",
    "watches",
    "auto",
    "bikes",
    "crafts",
    "lighting",
    "bedding",
    "travel",
)
REGIONS = ("north", "south", "east", "west", "central")
PRICE_WORDS = ("cheap", "budget", "mid", "premium", "luxury")
QUERY_WORDS = ("best", "new", "sale", "gift", "deal", "top", "mini", "pro", "set", "kit")
EPOCH_START = 1_767_571_200  # 2026-01-05 00:00 UTC, a Monday
WEEKDAY_WEIGHTS = np.array([1.0, 0.95, 0.95, 1.0, 1.1, 1.45, 1.35])  # Monday .. Sunday
DAILY_PEAKS = ((9.0, 1.5, 0.2), (13.0, 1.5, 0.3), (20.5, 1.8, 0.5))  # hour, spread, weight

SHOP = "built-in shop data"


@dataclass(frozen=True)
class ShopConfig:
    users: int = option(1000, "users to generate", key="shop-users", group=SHOP)
    items: int = option(1000, "items in the catalogue", key="shop-items", group=SHOP)
    categories: int = option(20, "item categories", key="shop-categories", group=SHOP)
    days: int = option(60, "days of behaviour", key="shop-days", group=SHOP)
    sessions_per_user: float = 4.0  # mean; every user has at least two
    views_per_session: float = 4.0  # mean; every session has at least two
    seed: int = 0

    def validate(self) -> None:
        if self.users < 1 or self.items < 2 or self.days < 1:
            raise UserError("shop: users must be >= 1, items >= 2 and days >= 1")
        if not 2 <= self.categories <= len(CATEGORIES):
            raise UserError(f"shop: categories must be between 2 and {len(CATEGORIES)}")
        if self.items < self.categories:
            raise UserError(f"shop: need at least one item per category ({self.categories} items)")
        if self.sessions_per_user <= 0 or self.views_per_session <= 0:
            raise UserError("shop: sessions per user and views per session must be positive")


# Behaviour probabilities, fixed so the planted structure is the same at every size.
P_SEARCH_START = 0.3
P_CART = 0.25
P_BUY_AFTER_CART = 0.45
P_COMPLEMENT_AFTER_BUY = 0.7
P_SUCCESSOR = 0.6
P_SAME_CATEGORY = 0.25


class _Catalogue:
    def __init__(self, cfg: ShopConfig, rng: np.random.Generator):
        n, c = cfg.items, cfg.categories
        sizes = rng.dirichlet(np.full(c, 4.0))
        self.category = np.concatenate([np.arange(c), rng.choice(c, size=n - c, p=sizes)])
        rng.shuffle(self.category)
        self.price_band = np.clip(rng.normal(2.0, 1.0, size=n).round(), 0, 4).astype(int)
        rank = rng.permutation(n) + 1
        self.popularity = 1.0 / rank**0.9
        self.members = [np.flatnonzero(self.category == k) for k in range(c)]
        self.member_weights = [self.popularity[m] / self.popularity[m].sum() for m in self.members]
        self.successor = np.empty(n, dtype=int)
        for members in self.members:
            chain = rng.permutation(members)
            self.successor[chain] = np.roll(chain, -1)
        self.complement = np.array([self._popular(rng, (self.category[i] + 1) % c) for i in range(n)])

    def _popular(self, rng: np.random.Generator, category: int) -> int:
        return int(rng.choice(self.members[category], p=self.member_weights[category]))

    def popular_in(self, rng: np.random.Generator, category: int) -> int:
        return self._popular(rng, category)


def _session_starts(rng: np.random.Generator, count: int, days: int) -> np.ndarray:
    day_weights = WEEKDAY_WEIGHTS[np.arange(days) % 7]
    day = rng.choice(days, size=count, p=day_weights / day_weights.sum())
    peak = rng.choice(len(DAILY_PEAKS), size=count, p=[w for _, _, w in DAILY_PEAKS])
    hour = np.array([rng.normal(DAILY_PEAKS[k][0], DAILY_PEAKS[k][1]) for k in peak]) % 24.0
    return np.sort(EPOCH_START + day * 86400.0 + np.floor(hour * 3600.0))


def _query(rng: np.random.Generator, catalogue: _Catalogue, item: int) -> str:
    words = [CATEGORIES[catalogue.category[item]], PRICE_WORDS[catalogue.price_band[item]]]
    if rng.random() < 0.5:
        words.append(QUERY_WORDS[rng.integers(len(QUERY_WORDS))])
    return " ".join(words)


class _Rows:
    def __init__(self) -> None:
        self.user: list[int] = []
        self.item: list[int] = []
        self.time: list[float] = []
        self.event: list[str] = []
        self.query: list[str | None] = []

    def add(self, user: int, item: int, time: float, event: str, query: str | None = None) -> None:
        self.user.append(user)
        self.item.append(item)
        self.time.append(time)
        self.event.append(event)
        self.query.append(query)


def _session(
    rows: _Rows, rng: np.random.Generator, cat: _Catalogue, user: int, taste: np.ndarray, start: float, views: float
) -> None:
    item = cat.popular_in(rng, int(rng.choice(len(taste), p=taste)))
    clock = start
    searched = rng.random() < P_SEARCH_START
    rows.add(user, item, clock, SEARCH if searched else VIEW, _query(rng, cat, item) if searched else None)
    for _ in range(1 + rng.poisson(max(views - 2.0, 0.0))):
        bought = False
        if rng.random() < P_CART:
            clock += 5.0 + rng.exponential(30.0)
            rows.add(user, item, clock, CART)
            if rng.random() < P_BUY_AFTER_CART:
                clock += 5.0 + rng.exponential(30.0)
                rows.add(user, item, clock, PURCHASE)
                bought = True
        item = _next_item(rng, cat, item, taste, bought)
        clock += 5.0 + rng.exponential(40.0)
        rows.add(user, item, clock, VIEW)


def _next_item(rng: np.random.Generator, cat: _Catalogue, item: int, taste: np.ndarray, bought: bool) -> int:
    if bought and rng.random() < P_COMPLEMENT_AFTER_BUY:
        return int(cat.complement[item])
    draw = rng.random()
    if draw < P_SUCCESSOR:
        return int(cat.successor[item])
    if draw < P_SUCCESSOR + P_SAME_CATEGORY:
        return cat.popular_in(rng, int(cat.category[item]))
    return cat.popular_in(rng, int(rng.choice(len(taste), p=taste)))


def generate_shop(cfg: ShopConfig = ShopConfig()) -> Interactions:
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    cat = _Catalogue(cfg, rng)
    region_taste = rng.dirichlet(np.ones(cfg.categories), size=len(REGIONS))
    region = rng.integers(len(REGIONS), size=cfg.users)
    rows = _Rows()
    for user in range(cfg.users):
        taste = 0.7 * rng.dirichlet(np.full(cfg.categories, 0.3)) + 0.3 * region_taste[region[user]]
        taste /= taste.sum()
        for start in _session_starts(rng, 2 + rng.poisson(max(cfg.sessions_per_user - 2.0, 0.0)), cfg.days):
            _session(rows, rng, cat, user, taste, start, cfg.views_per_session)
    return _as_interactions(rows, cat, region, cfg)


def _as_interactions(rows: _Rows, cat: _Catalogue, region: np.ndarray, cfg: ShopConfig) -> Interactions:
    user_tokens = np.array([f"u{u:06d}" for u in range(cfg.users)], dtype=object)
    item_tokens = np.array([f"i{i:06d}" for i in range(cfg.items)], dtype=object)
    events = make_table(
        user=pd.Series(user_tokens[np.asarray(rows.user)]),
        item=pd.Series(item_tokens[np.asarray(rows.item)]),
        timestamp=np.asarray(rows.time),
        event=pd.Series(rows.event, dtype=object),
        query=pd.Series(rows.query, dtype=object),
    )
    users = pd.DataFrame({"region": [REGIONS[r] for r in region]}, index=user_tokens)
    items = pd.DataFrame(
        {
            "category": [CATEGORIES[c] for c in cat.category],
            "price_band": [PRICE_WORDS[b] for b in cat.price_band],
        },
        index=item_tokens,
    )
    seen_items = pd.unique(events["item"])
    return Interactions(
        events,
        user_features=users,
        item_features=items.loc[seen_items],
        source=f"shop(users={cfg.users}, items={cfg.items}, categories={cfg.categories}, days={cfg.days}, "
        f"seed={cfg.seed})",
        format="shop",
    )
