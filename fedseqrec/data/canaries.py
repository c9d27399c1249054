"""The privacy audit's data: canary users, and real users put to the same coin.

Canaries are users with random, distinctive histories (items drawn uniformly from the catalogue, none twice, as
long as a typical user's) — nothing a model can predict unless it trained on them. Each is included in the training
data independently with probability ½. Real audited users are drawn from the data and put to the same coin: those
with tails are left out of it altogether (the membership-inference attack on real users needs non-members from the
same population). Included canaries train on their whole sequence and hold no validation or test target, so every
quality metric stays over real users. The coins come from ``--audit-seed`` (drawn from the OS when a run starts and
recorded in its config, so every simulated client builds the same data); the plan, coins included, is kept apart
from the training data (``Dataset.audit``) and written to the run folder's sealed file before training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedseqrec.data.interactions import EVENT, ITEM, TIMESTAMP, USER, append_users
from fedseqrec.errors import UserError

CANARY_PREFIX = "canary-"
SEALED = "audit_coins.json"  # in the run folder: the plan and its coins, written before training


def audit_plan(events: pd.DataFrame, canaries: int, real_users: int, seed: int) -> dict:
    """Which canaries (their item tokens) and which real users (their histories) there are, and their coins."""
    rng = np.random.default_rng([seed, 0xA0D17])
    items = events[ITEM].unique()
    per_user = events.groupby(USER, sort=False)
    length = max(4, int(per_user.size().median()))
    if canaries > events[USER].nunique():
        raise UserError(
            f"--audit-canaries {canaries} is more than the data's {events[USER].nunique()} users: the canaries would "
            "outnumber the users the model is trained for"
        )
    if canaries and length > len(items):
        raise UserError(f"canaries of {length} distinct items need a catalogue of at least {length} items")
    plan_canaries = [
        {
            "token": f"{CANARY_PREFIX}{c:05d}",
            "included": bool(rng.random() < 0.5),
            "items": [str(i) for i in rng.choice(items, size=length, replace=False)],
        }
        for c in range(canaries)
    ]
    eligible = per_user.size()
    eligible = eligible[eligible >= 3].index.to_numpy()
    if real_users > len(eligible) // 2:
        raise UserError(
            f"--audit-users {real_users}: the data has {len(eligible)} users with 3 or more events; audit at most "
            f"half of them ({len(eligible) // 2}), so that the model still trains on most users"
        )
    chosen = rng.choice(eligible, size=real_users, replace=False) if real_users else []
    users = []
    for user in chosen:
        history = per_user.get_group(user)
        users.append(
            {
                "token": str(user),
                "included": bool(rng.random() < 0.5),
                "items": history[ITEM].astype(str).tolist(),
                "timestamps": history[TIMESTAMP].astype(float).tolist(),
            }
        )
    event = str(events[EVENT].mode().iloc[0]) if len(events) else "interaction"
    return {"seed": seed, "event": event, "canaries": plan_canaries, "users": users}


def apply_plan(events: pd.DataFrame, plan: dict) -> pd.DataFrame:
    """``events`` without the audited real users whose coin said "out", with the canaries whose coin said "in"
    appended (after every real event in time, grouped by user as cleaning leaves the log)."""
    left_out = {u["token"] for u in plan["users"] if not u["included"]}
    kept = events[~events[USER].astype(str).isin(left_out)]
    start = float(events[TIMESTAMP].max()) + 1.0 if len(events) else 0.0
    rows = [
        (canary["token"], item, start + 1000.0 * number + position)
        for number, canary in enumerate(plan["canaries"])
        if canary["included"]
        for position, item in enumerate(canary["items"])
    ]
    if not rows:
        return kept.reset_index(drop=True)
    added = pd.DataFrame(rows, columns=[USER, ITEM, TIMESTAMP])
    added[ITEM] = added[ITEM].astype(events[ITEM].dtype)
    return append_users(kept.reset_index(drop=True), added, plan["event"])


def canary_ids(user_tokens: np.ndarray) -> np.ndarray:
    """Ids (positions in the user vocabulary) of the canaries in the data."""
    tokens = pd.Series(user_tokens, dtype=object).astype(str)
    return np.flatnonzero(tokens.str.startswith(CANARY_PREFIX).to_numpy()).astype(np.int64)


def seal(folder: Path, plan: dict | None) -> None:
    """Record the audit's plan and coins in the run folder before training, read-only (kept as it is when the
    folder already holds it: a resumed run)."""
    path = Path(folder) / SEALED
    if plan is not None and not path.exists():
        path.write_text(json.dumps(plan) + "\n")
        path.chmod(0o400)
