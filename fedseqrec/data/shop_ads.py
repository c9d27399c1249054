"""Ad impressions for the `shop` log (``--task ctr``): slates of ads with click and purchase labels.

Before every session but a user's first, a slate of SLATE ads is shown: two popular items, a popular item of the
category of the user's last event, the successor of that last item, and the complement of the user's last
purchase (a popular item of a taste category when there is none). Whether an ad is clicked depends on the recent
history, which a model of the user's overall taste cannot fully see: the ad's category against the last event's and
the last five events', whether it continues the last item's browsing chain, whether it complements the last
purchase. A click turns into a purchase rarely (a few per cent), more often for the complement of a purchase and
for cheap items. Impressions are events of type ``impression`` (not clicked), ``ad-click`` (clicked, not bought) and
``ad-conversion`` (clicked and bought), one second before the session they open; the behaviour log itself is
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedseqrec.data.interactions import AD_CLICK, AD_CONVERSION, IMPRESSION

SLATE = 5
RECENT = 5  # "the recent history": the last five events
# Click log-odds: base, ad in the last event's category, in one of the last RECENT events' categories, the
# successor of the last item, the complement of the last purchase.
CLICK = (-3.4, 1.5, 0.8, 1.6, 1.3)
# Purchase-after-click log-odds: base, the complement of the last purchase, a cheap item (price band 0 or 1).
BUY = (-3.8, 1.4, 0.7)


@dataclass
class AdSlates:
    """Impression rows (one per ad shown) and the probabilities they were drawn with (the generator's truth)."""

    row: np.ndarray  # the behaviour-log row (a session's first event) each impression precedes
    item: np.ndarray
    slot: np.ndarray  # position in the slate, 0..SLATE-1
    event: np.ndarray  # object: IMPRESSION, AD_CLICK or AD_CONVERSION
    p_click: np.ndarray
    p_buy: np.ndarray  # given a click


def ad_slates(rng, cat, user: np.ndarray, item: np.ndarray, event: np.ndarray, session: np.ndarray) -> AdSlates:
    """``cat``: the shop's catalogue; rows grouped by user in time order, ``event`` codes 0 view .. 3 purchase."""
    rows = np.arange(len(item))
    starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
    first = starts[np.searchsorted(starts, rows, side="right") - 1]
    opens = np.r_[True, session[1:] != session[:-1]]
    shown = rows[opens & (rows > first)]  # sessions after a user's first
    last = item[shown - 1]
    bought = np.where(event == 3, rows, -1)
    np.maximum.accumulate(bought, out=bought)
    purchase_row = bought[shown - 1]
    has_purchase = purchase_row >= first[shown]
    purchased = item[np.maximum(purchase_row, 0)]
    candidates = np.stack(
        [
            cat.popular_in(rng, rng.integers(cat.category.max() + 1, size=len(shown))),
            cat.popular_in(rng, rng.integers(cat.category.max() + 1, size=len(shown))),
            cat.popular_in(rng, cat.category[last]),
            cat.successor[last],
            np.where(has_purchase, cat.complement[purchased], cat.popular_in(rng, cat.category[last])),
        ],
        axis=1,
    )
    recent = np.stack([cat.category[item[np.maximum(shown - k, first[shown])]] for k in range(1, RECENT + 1)], 1)
    ad_category = cat.category[candidates]
    complement = has_purchase[:, None] & (candidates == cat.complement[purchased][:, None])
    click_logit = (
        CLICK[0]
        + CLICK[1] * (ad_category == cat.category[last][:, None])
        + CLICK[2] * (ad_category[:, :, None] == recent[:, None, :]).any(-1)
        + CLICK[3] * (candidates == cat.successor[last][:, None])
        + CLICK[4] * complement
    )
    buy_logit = BUY[0] + BUY[1] * complement + BUY[2] * (cat.price_band[candidates] <= 1)
    p_click, p_buy = _sigmoid(click_logit), _sigmoid(buy_logit)
    clicked = rng.random(p_click.shape) < p_click
    converted = clicked & (rng.random(p_buy.shape) < p_buy)
    labels = np.where(converted, AD_CONVERSION, np.where(clicked, AD_CLICK, IMPRESSION)).astype(object)
    return AdSlates(
        row=np.repeat(shown, SLATE),
        item=candidates.reshape(-1),
        slot=np.tile(np.arange(SLATE), len(shown)),
        event=labels.reshape(-1),
        p_click=p_click.reshape(-1),
        p_buy=p_buy.reshape(-1),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
