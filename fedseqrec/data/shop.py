"""``shop``: a seeded synthetic e-commerce behaviour log, the default dataset of every command.

Users have a region and a latent taste over categories; items have a category, a price band and Zipf-like
popularity. Each user browses in sessions (view -> cart -> purchase) whose start times follow a daily and a
weekly rhythm; some sessions start from a search, whose tokens are kept in ``query``.

Planted sequential structure, learnable from order but invisible to a popularity model:
- every category has a fixed browsing chain: after viewing an item, the next view is often its successor;
- sessions stay in one category (category persistence);
- a purchase is often followed by the item's fixed complement from the next category (complementary buys).

With ``searches=True`` (the data of ``--task search``) the item a search finds also depends on the history: the
query names a category (drawn from the user's taste) and a price band, and most of the time the customer clicks
the successor of the last item they saw in that category. Only the query knows the category and only the history
knows the item: a text-match on the query or a query-agnostic sequence model each get part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import CART, PURCHASE, SEARCH, VIEW, Interactions, make_table
from fedseqrec.data.shop_ads import AdSlates, ad_slates
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
P_SEARCH_FROM_HISTORY = 0.8  # --task search: a search clicks the successor of the last item seen in its category
P_SEARCH_START_PLANTED = 0.6  # ... and more sessions open with a search (with P_SEARCH_START: 72 %)
RECENT = 10  # ... a category of one of the user's last RECENT events


class _Catalogue:
    def __init__(self, cfg: ShopConfig, rng: np.random.Generator):
        n, c = cfg.items, cfg.categories
        sizes = rng.dirichlet(np.full(c, 4.0))
        self.category = np.concatenate([np.arange(c), rng.choice(c, size=n - c, p=sizes)])
        rng.shuffle(self.category)
        self.price_band = np.clip(rng.normal(2.0, 1.0, size=n).round(), 0, 4).astype(int)
        rank = rng.permutation(n) + 1
        self.popularity = 1.0 / rank**0.9
        self.successor = np.empty(n, dtype=int)
        for k in range(c):
            chain = rng.permutation(np.flatnonzero(self.category == k))
            self.successor[chain] = np.roll(chain, -1)
        # Sampling "a popular item of category k" for many k at once: items grouped by category, each group's
        # cumulative popularity share shifted by k, so one searchsorted finds the item for k + u, u ~ U[0, 1).
        self._by_category = np.argsort(self.category, kind="stable")
        grouped = self.category[self._by_category]
        weights = self.popularity[self._by_category]
        totals = np.bincount(grouped, weights=weights, minlength=c)
        within = np.cumsum(weights) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[grouped]
        share = within / totals[grouped]
        share[np.r_[np.flatnonzero(np.diff(grouped)), len(grouped) - 1]] = 1.0  # each group ends at exactly 1
        self._keys = grouped + share
        self.complement = self.popular_in(rng, (self.category + 1) % c)

    def popular_in(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One item per entry of ``categories``, drawn by popularity within that category."""
        index = np.searchsorted(self._keys, categories + rng.random(len(categories)), side="right")
        return self._by_category[np.minimum(index, len(self._keys) - 1)]


def _categories(rng: np.random.Generator, taste: np.ndarray) -> np.ndarray:
    """One category per row of ``taste`` (rows of probabilities)."""
    below = rng.random(len(taste))[:, None] > np.cumsum(taste, axis=1)
    return np.minimum(below.sum(axis=1), taste.shape[1] - 1)


def _session_starts(rng: np.random.Generator, count: int, days: int) -> np.ndarray:
    day_weights = WEEKDAY_WEIGHTS[np.arange(days) % 7]
    day = rng.choice(days, size=count, p=day_weights / day_weights.sum())
    peaks = np.array(DAILY_PEAKS)
    peak = rng.choice(len(peaks), size=count, p=peaks[:, 2])
    hour = rng.normal(peaks[peak, 0], peaks[peak, 1]) % 24.0
    return EPOCH_START + day * 86400.0 + np.floor(hour * 3600.0)


class _Rows:
    """Events as parallel arrays, with the session and the position in it that order them."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, session: np.ndarray, order: int, item: np.ndarray, time: np.ndarray, event: np.ndarray) -> None:
        self.parts.append((session, np.full(len(session), order), item, time.copy(), event))

    def columns(self) -> tuple[np.ndarray, ...]:
        session, order, item, time, event = (np.concatenate(c) for c in zip(*self.parts, strict=True))
        rows = np.lexsort((order, session))  # sessions in order, each session's events in the order they happened
        return session[rows], item[rows], time[rows], event[rows]


EVENT_NAMES = np.array([VIEW, SEARCH, CART, PURCHASE], dtype=object)


def _next_items(rng, cat: _Catalogue, item: np.ndarray, taste: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """The next view of every active session: a complement after a buy, else the successor, the same category or
    the user's taste."""
    complement = bought & (rng.random(len(item)) < P_COMPLEMENT_AFTER_BUY)
    draw = rng.random(len(item))
    successor = ~complement & (draw < P_SUCCESSOR)
    same = ~complement & ~successor & (draw < P_SUCCESSOR + P_SAME_CATEGORY)
    other = ~(complement | successor | same)
    out = cat.successor[item]
    out[complement] = cat.complement[item[complement]]
    out[same] = cat.popular_in(rng, cat.category[item[same]])
    out[other] = cat.popular_in(rng, _categories(rng, taste[other]))
    return out


def _sessions(rng: np.random.Generator, cat: _Catalogue, cfg: ShopConfig, taste: np.ndarray) -> tuple:
    """Every session of every user, simulated step by step side by side: (session user, rows)."""
    per_user = 2 + rng.poisson(max(cfg.sessions_per_user - 2.0, 0.0), size=cfg.users)
    user = np.repeat(np.arange(cfg.users), per_user)
    starts = _session_starts(rng, len(user), cfg.days)
    order = np.lexsort((starts, user))  # a user's sessions in time order
    user, clock = user[order], starts[order]
    taste = taste[user]
    steps = 1 + rng.poisson(max(cfg.views_per_session - 2.0, 0.0), size=len(user))
    item = cat.popular_in(rng, _categories(rng, taste))
    searched = rng.random(len(user)) < P_SEARCH_START
    rows = _Rows()
    sessions = np.arange(len(user))
    rows.add(sessions, 0, item, clock, searched.astype(int))  # 1: search, 0: view
    for step in range(int(steps.max())):
        active = sessions[steps > step]
        current = item[active]
        cart = rng.random(len(active)) < P_CART
        clock[active[cart]] += 5.0 + rng.exponential(30.0, size=int(cart.sum()))
        rows.add(active[cart], 3 * step + 1, current[cart], clock[active[cart]], np.full(int(cart.sum()), 2))
        bought = cart & (rng.random(len(active)) < P_BUY_AFTER_CART)
        clock[active[bought]] += 5.0 + rng.exponential(30.0, size=int(bought.sum()))
        rows.add(active[bought], 3 * step + 2, current[bought], clock[active[bought]], np.full(int(bought.sum()), 3))
        item[active] = _next_items(rng, cat, current, taste[active], bought)
        clock[active] += 5.0 + rng.exponential(40.0, size=len(active))
        rows.add(active, 3 * step + 3, item[active], clock[active], np.zeros(len(active), dtype=int))
    return user, rows.columns()


def _queries(rng: np.random.Generator, cat: _Catalogue, items: np.ndarray) -> np.ndarray:
    """A search's words: the item's category and price band, and half the time a common word."""
    extra = np.where(rng.random(len(items)) < 0.5, rng.integers(len(QUERY_WORDS), size=len(items)), -1)
    words = [
        np.array(CATEGORIES, dtype=object)[cat.category[items]],
        np.array(PRICE_WORDS, dtype=object)[cat.price_band[items]],
    ]
    text = words[0] + " " + words[1]
    with_word = extra >= 0
    text[with_word] = text[with_word] + " " + np.array(QUERY_WORDS, dtype=object)[extra[with_word]]
    return text


def generate_shop(cfg: ShopConfig = ShopConfig(), searches: bool = False, ads: bool = False) -> Interactions:
    """The log; ``searches``: the variant whose searches find items that depend on the history (module doc);
    ``ads``: with ad impressions and their click and purchase labels (``data/shop_ads.py``)."""
    return shop_with_truth(cfg, searches, ads)[0]


def shop_with_truth(cfg: ShopConfig, searches: bool = False, ads: bool = False) -> tuple[Interactions, AdSlates | None]:
    """:func:`generate_shop`, and the ad slates with the probabilities their labels were drawn with."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    cat = _Catalogue(cfg, rng)
    region_taste = rng.dirichlet(np.ones(cfg.categories), size=len(REGIONS))
    region = rng.integers(len(REGIONS), size=cfg.users)
    taste = 0.7 * rng.dirichlet(np.full(cfg.categories, 0.3), size=cfg.users) + 0.3 * region_taste[region]
    taste /= taste.sum(axis=1, keepdims=True)
    session_user, (session, item, time, event) = _sessions(rng, cat, cfg, taste)
    user = session_user[session]
    if searches:  # its own random stream: the plain log's draws are untouched
        planted = np.random.default_rng([cfg.seed, 1])
        opens = np.r_[True, session[1:] != session[:-1]] & (event == 0)
        event = np.where(opens & (planted.random(len(event)) < P_SEARCH_START_PLANTED), 1, event)
        item = _searched_from_history(planted, cat, user, item, event == 1)
    query = np.full(len(item), None, dtype=object)
    is_search = event == 1
    query[is_search] = _queries(rng, cat, item[is_search])
    names = EVENT_NAMES[event]
    slates = None
    if ads:  # its own random stream too; impressions one second before the session they open
        slates = ad_slates(np.random.default_rng([cfg.seed, 2]), cat, user, item, event, session)
        shown = time[slates.row] - 1.0 + 0.01 * slates.slot
        user, item, time = (
            np.concatenate(pair) for pair in ((user, user[slates.row]), (item, slates.item), (time, shown))
        )
        names = np.concatenate([names, slates.event])
        query = np.concatenate([query, np.full(len(slates.item), None, dtype=object)])
    return _as_interactions(user, item, time, names, query, cat, region, cfg), slates


def _searched_from_history(rng, cat: _Catalogue, user: np.ndarray, item: np.ndarray, search: np.ndarray) -> np.ndarray:
    """Each search (rows grouped by user, in time order) after at least one event, with probability
    P_SEARCH_FROM_HISTORY: the category of one of the user's last RECENT events, and the successor of the last
    item seen in it."""
    rows = np.arange(len(item))
    starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
    first = starts[np.searchsorted(starts, rows, side="right") - 1]  # each row's user's first row
    chosen = rows[search & (rows > first) & (rng.random(len(item)) < P_SEARCH_FROM_HISTORY)]
    back = np.minimum(RECENT, chosen - first[chosen])
    category = cat.category[item]
    wanted = category[chosen - 1 - (rng.random(len(chosen)) * back).astype(np.int64)]
    # The last earlier row of (user, wanted category): rows keyed by (user, category, row), sorted, searched.
    group = user.astype(np.int64) * (cat.category.max() + 1)
    key = (group + category) * len(item) + rows
    order = np.argsort(key, kind="stable")
    found = order[np.searchsorted(key[order], (group[chosen] + wanted) * len(item) + chosen) - 1]
    out = item.copy()
    out[chosen] = cat.successor[item[found]]
    return out


def _as_interactions(user, item, time, event, query, cat: _Catalogue, region: np.ndarray, cfg: ShopConfig):
    user_tokens = np.array([f"u{u:06d}" for u in range(cfg.users)], dtype=object)
    item_tokens = np.array([f"i{i:06d}" for i in range(cfg.items)], dtype=object)
    events = make_table(
        user=pd.Series(user_tokens[user]),
        item=pd.Series(item_tokens[item]),
        timestamp=time,
        event=pd.Series(event, dtype=object),
        query=pd.Series(query, dtype=object),
    )
    users = pd.DataFrame({"region": np.array(REGIONS, dtype=object)[region]}, index=user_tokens)
    items = pd.DataFrame(
        {
            "category": np.array(CATEGORIES, dtype=object)[cat.category[: cfg.items]],
            "price_band": np.array(PRICE_WORDS, dtype=object)[cat.price_band],
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
