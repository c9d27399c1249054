"""The private co-occurrence model: item pairs counted from users' histories and released once with the Gaussian
mechanism, user-level.

1. The K items most users hold are chosen from item counts released with noise z = ``--cooc-item-noise`` / ε
   (``item_selection``, the release ``--item-rows`` uses): the ledger's first record. The top K of a released
   vector is post-processing. A smaller z chooses the items and orders the popularity prior better and leaves
   more noise for the pairs.
2. Each user's pairs between chosen items (``models.cooccurrence.user_pairs``) form a vector over the K(K − 1) / 2
   unordered pairs, scaled to ℓ2 norm at most 1: adding or removing one user moves the sum by at most 1.
3. The sum gets Gaussian noise of standard deviation σ on every pair of chosen items, once — σ the smallest that
   keeps the two releases composed within the target ε: the ledger's second record (sampling rate 1, one step).

The noisy counts of step 1 are the model's popularity prior, so the model is post-processing of the two releases
alone. The sum is a sum over users, so a federation's silos can each add up their own users' clipped vectors and
the server noise the total once: the same release, whoever adds it up (the trust model of ``--privacy
user-level``: the server sees the silos' sums before the noise).

With users declared public (``--cooc-public-users``, opted in) the release changes shape
(``public_supported_cooccurrence``): the public users' pairs are counted exactly, over every item, and they alone
choose which pairs are released — the pairs some public user holds. Each private user's pairs among those, one
vector scaled to ℓ2 norm ≤ 1, are summed and every such pair gets Gaussian noise σ once (one record: the choice
cost the private users nothing). A row then holds a few dozen noisy cells instead of thousands, so the noise no
longer buries the pairs that matter; the model is the public counts plus the released ones. The guarantee covers
the private users only.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.config import ModelConfig
from fedseqrec.models.cooccurrence import ItemCooccurrence, pair_table, user_pairs
from fedseqrec.privacy.accounting import calibrate_noise_after, epsilon
from fedseqrec.privacy.item_selection import item_counts, released_counts, top_items
from fedseqrec.privacy.public import public_users

MECHANISM = (
    "private co-occurrence: item counts released with Gaussian noise choose K items; each user's pairs of chosen "
    "items within --cooc-window events, as one vector scaled to ℓ2 norm ≤ 1, summed over users; Gaussian noise σ on "
    "every pair, released once"
)
PRIOR_WEIGHT = 2.0  # the popularity prior's largest value, in units of σ: below a pair seen by a few users
MOST_ITEMS = 10_000  # every pair of chosen items is noised: 5·10⁷ pairs, a few dense K² arrays of 0.8 GB


Cells = Callable[[np.ndarray], np.ndarray]  # a user's (P, 2) pairs of item ids → the released cell of each (-1: none)


def _clipped_sum(
    data: SequenceData, split: Split, users, cells: Cells, size: int, window: int
) -> tuple[np.ndarray, float]:
    """Σ over ``users`` of their pair vectors over the released cells, each scaled to ℓ2 norm ≤ 1 after the pairs
    outside the cells are left out; and the largest norm before scaling."""
    total, largest = np.zeros(size), 0.0
    for user in users:
        history = data.sequence(int(user))[: split.train_end[int(user)]]
        pairs, weights = user_pairs(history, window)
        where = cells(pairs)
        kept = where >= 0
        if not kept.any():
            continue
        norm = float(np.sqrt((weights[kept] ** 2).sum()))
        largest = max(largest, norm)
        np.add.at(total, where[kept], weights[kept] / max(norm, 1.0))
    return total, largest


def clipped_pair_sum(
    data: SequenceData, split: Split, users, chosen: np.ndarray, window: int
) -> tuple[np.ndarray, float]:
    """Σ over ``users`` of their pair vectors over the ``chosen`` items, each scaled to ℓ2 norm ≤ 1, as an upper
    triangular (K, K) matrix in ``chosen``'s order; and the largest norm before scaling."""
    k = len(chosen)
    position = np.full(data.n_items + 1, -1, dtype=np.int64)
    position[chosen] = np.arange(k)

    def cells(pairs: np.ndarray) -> np.ndarray:
        a, b = position[pairs[:, 0]], position[pairs[:, 1]]
        return np.where((a >= 0) & (b >= 0), np.minimum(a, b) * k + np.maximum(a, b), -1)

    total, largest = _clipped_sum(data, split, users, cells, k * k, window)
    return total.reshape(k, k), largest


def support_pair_sum(
    data: SequenceData, split: Split, users, keys: np.ndarray, window: int
) -> tuple[np.ndarray, float]:
    """Σ over ``users`` of their pair vectors over the pairs ``keys`` (ascending ``first · (n_items + 1) +
    second``), each scaled to ℓ2 norm ≤ 1, in ``keys``' order; and the largest norm before scaling."""
    size = data.n_items + 1

    def cells(pairs: np.ndarray) -> np.ndarray:
        key = pairs[:, 0] * size + pairs[:, 1]
        if not len(keys):
            return np.full(len(key), -1)
        at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        return np.where(keys[at] == key, at, -1)

    return _clipped_sum(data, split, users, cells, len(keys), window)


@dataclass(frozen=True)
class ItemChoice:
    """Step 1's release: the chosen items, the noisy counts they were chosen from (the popularity prior), their
    noise, and the σ left for the pairs within the target ε."""

    chosen: np.ndarray
    noisy_counts: np.ndarray
    selection_noise: float
    sigma: float
    sensitivity: float = 1.0  # the counts' ℓ2 sensitivity (above 1: quantised by secure aggregation)


def choose_items(
    counts: np.ndarray,
    target_epsilon: float,
    delta: float,
    items: int,
    item_noise_times_epsilon: float,
    accountant: str,
    rng: np.random.Generator,
    sensitivity: float = 1.0,
) -> ItemChoice:
    """Step 1 from the users' summed unit-norm item counts (``item_selection.item_counts``, over every user —
    however many silos added them up); ``sensitivity``: the sum's, 1 unless secure aggregation quantised it
    (``privacy.quantised_sum``)."""
    if items > MOST_ITEMS:
        raise UserError(
            f"--cooc-items {items}: the release noises every pair of the chosen items ({items * (items - 1) // 2:,} "
            f"pairs); choose at most {MOST_ITEMS:,}"
        )
    selection_noise = item_noise_times_epsilon / target_epsilon
    noisy_counts = released_counts(counts, selection_noise * sensitivity, rng)  # the choice and the prior
    sigma = calibrate_noise_after(((selection_noise, 1.0, 1),), target_epsilon, delta, 1.0, 1, accountant)
    return ItemChoice(top_items(noisy_counts, items), noisy_counts, selection_noise, sigma, sensitivity)


def release_pairs(
    choice: ItemChoice,
    total: np.ndarray,
    window: int,
    cfg: ModelConfig,
    delta: float,
    accountant: str,
    rng: np.random.Generator,
    sensitivity: float = 1.0,
) -> tuple[ItemCooccurrence, dict]:
    """Steps 2–3 from the users' summed clipped pair vectors (``clipped_pair_sum``'s upper triangle, over every
    user): the released model and its privacy record (the two releases' ledger, ε re-computed from it, δ);
    ``sensitivity``: the sum's, 1 unless secure aggregation quantised it (``privacy.quantised_sum``)."""
    chosen, noisy_counts, sigma = choice.chosen, choice.noisy_counts, choice.sigma
    noise = sigma * sensitivity  # the pairs' standard deviation
    upper = np.triu(total + rng.normal(0.0, noise, total.shape), k=1)
    released = upper + upper.T
    prior = np.zeros(cfg.n_items + 1)
    prior[chosen] = PRIOR_WEIGHT * noise * np.clip(noisy_counts[chosen], 0.0, None)
    prior /= max(float(noisy_counts[chosen].max()), 1e-12)
    model = ItemCooccurrence.from_matrix(cfg, chosen, released, prior)
    ledger = [
        {"round": 0, "noise_multiplier": choice.selection_noise, "sample_rate": 1.0, "steps": 1},
        {"round": 1, "noise_multiplier": sigma, "sample_rate": 1.0, "steps": 1},
    ]
    record = {
        "mechanism": MECHANISM,
        "privacy_unit": "user-level: adding or removing one user with all of their events",
        "item_selection": {
            "count": len(chosen),
            "noise_multiplier": choice.selection_noise,
            "sensitivity_l2": choice.sensitivity,
        },
        **_release(window, sigma, delta, accountant, ledger, sensitivity),
    }
    return model, record


def private_cooccurrence(
    data: SequenceData,
    split: Split,
    target_epsilon: float,
    delta: float,
    items: int,
    window: int,
    cfg: ModelConfig,
    item_noise_times_epsilon: float = 10.0,
    accountant: str = "rdp",
    rng: np.random.Generator | None = None,
) -> tuple[ItemCooccurrence, dict]:
    """The release made in one process from every user of ``data``: the model and its privacy record."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))  # noise must not follow --seed
    users = np.arange(1, data.n_users + 1)
    counts = item_counts(data, split, users)
    choice = choose_items(counts, target_epsilon, delta, items, item_noise_times_epsilon, accountant, rng)
    total, _ = clipped_pair_sum(data, split, users, choice.chosen, window)
    return release_pairs(choice, total, window, cfg, delta, accountant, rng)


def _release(
    window: int, sigma: float, delta: float, accountant: str, ledger: list[dict], sensitivity: float = 1.0
) -> dict:
    """What every co-occurrence release records of its noise: the pairs' noise multiplier σ, their sensitivity
    (the noise's standard deviation is the product) and the ledger, ε composed from it."""
    composed = epsilon([(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in ledger], delta, accountant)
    return {
        "window": window,
        "noise_multiplier": sigma,
        "sensitivity_l2": sensitivity,
        "delta": delta,
        "accountant": accountant,
        "ledger": ledger,
        "max_epsilon": composed,
    }


PUBLIC_MECHANISM = (
    "private co-occurrence over public pairs: the public users' pairs counted exactly choose the pairs released; each "
    "private user's pairs among them within --cooc-window events, as one vector scaled to ℓ2 norm ≤ 1, summed over "
    "the private users; Gaussian noise σ on every released pair, once"
)
PUBLIC_USE = (
    "their pairs are counted exactly (no noise) and choose which pairs the private users' noisy counts are released "
    "for; they are not covered by the guarantee"
)
PRIVATE_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0)  # the released counts' weights tried beside the public counts
TIE_BREAK = 1e-6  # the public users' item counts, scaled below any pair: they order only the items no pair reaches


@dataclass(frozen=True)
class PublicPairs:
    """The public users' side of the release: who they are and their exact pair table, whose pairs are the ones
    released (``keys``: ``first · (n_items + 1) + second``, ascending)."""

    users: np.ndarray
    share: float
    first: np.ndarray
    second: np.ndarray
    value: np.ndarray
    keys: np.ndarray


def public_pairs(data: SequenceData, split: Split, share: float, seed: int, window: int) -> PublicPairs:
    """The public users (``privacy.public.public_users(n_users, share, seed)``) and their pairs, counted exactly:
    public data, which whoever holds it (the server of a federation, which evaluates on every user) may count."""
    users = public_users(data.n_users, share, seed)
    table = pair_table((data.sequence(int(u))[: split.train_end[int(u)]] for u in users), window, data.n_items + 1)
    table = table.tocoo()
    keys = table.row.astype(np.int64) * (data.n_items + 1) + table.col  # ascending: the table's indices are sorted
    return PublicPairs(users, share, table.row, table.col, table.data, keys)


def release_on_public_pairs(
    pairs: PublicPairs,
    total: np.ndarray,
    data: SequenceData,
    split: Split,
    target_epsilon: float,
    delta: float,
    window: int,
    cfg: ModelConfig,
    accountant: str = "rdp",
    rng: np.random.Generator | None = None,
    protocol: str = "full",
    selection: str = "NDCG@10",
    sensitivity: float = 1.0,
) -> tuple[ItemCooccurrence, dict, ItemCooccurrence]:
    """From the private users' summed clipped vectors over the public pairs (``total``, ``support_pair_sum``):
    the released model, its privacy record, and the model of the public users' counts alone (what the private
    users' release adds to). The released counts are added with the weight of ``PRIVATE_WEIGHTS`` that ranks the
    public users' validation items best under ``protocol`` (``selection``): at small ε the noise outweighs the
    private users' pairs, and the weight 0 keeps the public users' model. ``sensitivity``: the sum's, 1 unless
    secure aggregation quantised it (``privacy.quantised_sum``)."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))  # noise must not follow --seed
    sigma = calibrate_noise_after((), target_epsilon, delta, 1.0, 1, accountant)
    released = total + rng.normal(0.0, sigma * sensitivity, len(pairs.keys))
    prior = TIE_BREAK * item_counts(data, split, pairs.users)
    first, second = pairs.first, pairs.second
    public_only = ItemCooccurrence.from_pairs(cfg, first, second, pairs.value, prior)
    # post-processing of the release, judged on public data: the choice costs nothing more
    weighed = {
        weight: ItemCooccurrence.from_pairs(cfg, first, second, pairs.value + weight * released, prior)
        for weight in PRIVATE_WEIGHTS
    }
    options = {"users": pairs.users, "max_len": cfg.max_len, "protocol": protocol}
    scores = {weight: evaluate(m, data, split, "valid", **options).get(selection, 0.0) for weight, m in weighed.items()}
    chosen = max(scores, key=scores.get)
    ledger = [{"round": 1, "noise_multiplier": sigma, "sample_rate": 1.0, "steps": 1}]
    record = {
        "mechanism": PUBLIC_MECHANISM,
        "privacy_unit": "user-level: adding or removing one private user with all of their events",
        "public_users": {"count": len(pairs.users), "share": pairs.share, "use": PUBLIC_USE},
        "released_pairs": len(pairs.keys),
        "private_weight": {
            "chosen": chosen,
            "valid_scores": {str(w): round(v, 6) for w, v in scores.items()},
            "chosen_by": f"the public users' validation {selection} (their data is public: the choice costs nothing)",
        },
        **_release(window, sigma, delta, accountant, ledger, sensitivity),
    }
    return weighed[chosen], record, public_only


def public_supported_cooccurrence(
    data: SequenceData,
    split: Split,
    target_epsilon: float,
    delta: float,
    public_share: float,
    seed: int,
    window: int,
    cfg: ModelConfig,
    **options,
) -> tuple[ItemCooccurrence, dict, ItemCooccurrence]:
    """The release made in one process from every user of ``data``: ``release_on_public_pairs`` with its
    ``options`` (accountant, rng, protocol, selection)."""
    pairs = public_pairs(data, split, public_share, seed, window)
    private = np.setdiff1d(np.arange(1, data.n_users + 1), pairs.users)
    total, _ = support_pair_sum(data, split, private, pairs.keys, window)
    return release_on_public_pairs(pairs, total, data, split, target_epsilon, delta, window, cfg, **options)
