"""Federation-wide user-level DP-FedSGD: the privacy unit is one user of the whole federation, one ledger covers
every user, and the noise is added once, to the sum over all silos.

Each round, with q = users-per-round / N (N: every user of the federation):

1. every silo samples each of its users independently with probability q (Poisson sampling, OS randomness);
2. for every sampled user it computes the gradient of that user's loss at the global model (the user's whole
   window is one example), clips it to norm C (``--max-grad-norm``) and adds it to the silo's sum;
3. with ``--noise-shares clients`` each silo adds N(0, σ²C²/K) to its sum (K silos: the shares add up to σ²C²);
4. the server adds the silo sums (``--noise-shares server``: and N(0, σ²C²) once), divides by the **expected**
   number of sampled users qN — never the actual count, which would depend on who took part — and applies the
   result as a gradient with the server optimiser of ``--strategy`` (fedavg: SGD with rate 1; fedadam, fedyogi,
   fedadagrad, fedavgm: Flower's server optimisers, ``--server-lr``).

Adding or removing one user changes the total by at most C (their clipped gradient, or nothing), so each round is
one Poisson-subsampled Gaussian mechanism (σ, q) on the user level, composed over the rounds by the accountant.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedseqrec.checks import number_problem
from fedseqrec.data.partition import ClientData
from fedseqrec.errors import UserError
from fedseqrec.jsonio import dumps
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.privacy.accounting import calibrate_noise_after
from fedseqrec.privacy.adaptive_clip import QuantileClip, sum_noise_multiplier
from fedseqrec.privacy.config import USER_LEVEL, PrivacyConfig, check_delta, default_delta
from fedseqrec.privacy.dp_fedavg import CentralAccountant, OneReleasePerRound
from fedseqrec.privacy.item_selection import ItemSelection, item_counts, row_mask, select_items
from fedseqrec.privacy.noisy_sum import with_noisy_sum
from fedseqrec.privacy.per_user import Contribution, clipped_update_sum
from fedseqrec.privacy.public import pretrain_on_public, private_users, public_users
from fedseqrec.privacy.quantised_sum import WHY

# --- a silo's round ----------------------------------------------------------------------------------------------


def sample_users(count: int, rate: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the users taken this round: each independently with probability ``rate`` (OS randomness)."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))
    return np.flatnonzero(rng.random(count) < rate)


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def contribution_rule(privacy: PrivacyConfig, clip: float) -> Contribution:
    """How this round's contributions are made; ``clip``: the round's norm (adaptive clipping moves it)."""
    return Contribution(clip, privacy.user_steps, privacy.user_lr, privacy.clipping)


def private_part(data: ClientData, privacy: PrivacyConfig, seed: int) -> ClientData:
    """The silo's users without the public ones (who are not part of the private rounds)."""
    users = private_users(data.users, data.sequences.n_users, privacy.public_users, seed)
    return replace(data, users=users)


@dataclass
class SiloReply:
    total: dict[str, torch.Tensor]  # the sampled users' clipped contributions, summed, plus the noise share
    sampled: int  # users sampled (the log only: the server never divides by it)
    loss: float  # their mean loss (the log only)
    unclipped: float  # Σ over them of ([norm ≤ C] − ½), plus its noise share: adaptive clipping's private count


def item_row_masks(model: SequentialRecommender, rows: list[int] | None) -> dict[str, torch.Tensor]:
    """Per trainable item table of ``model``, 1 for the ``rows`` that train (``--item-rows``), 0 for the others;
    empty when every row trains."""
    if rows is None:
        return {}
    weights = trainable(model)
    return {key: row_mask(rows, weights[key].shape[0]) for key in model.item_table_keys() if key in weights}


def silo_contribution(
    model: SequentialRecommender,
    windows: TrainingWindows,
    rate: float,
    rule: Contribution,
    noise_std: float,
    count_noise_std: float = 0.0,
    rows: list[int] | None = None,
) -> SiloReply:
    """The silo's reply: its sampled users' clipped contribution sum, plus its noise share when ``noise_std`` > 0;
    ``rows``: the item rows that train (the others get neither contribution nor noise), None for every row."""
    chosen = sample_users(len(windows), rate)
    loss, unclipped = float("nan"), 0.0
    masks = item_row_masks(model, rows)
    if len(chosen):
        total, norms, loss = clipped_update_sum(model, windows, chosen, rule, masks)
        unclipped = float((norms <= rule.clip).sum()) - len(chosen) / 2  # centred: one user moves it by ½
    else:
        total = {n: torch.zeros_like(p, device="cpu") for n, p in trainable(model).items()}
    if noise_std > 0:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
        noise = {n: torch.normal(0.0, noise_std, t.shape, generator=generator) for n, t in total.items()}
        total = {n: t + (_masked_rows(noise[n], masks[n]) if n in masks else noise[n]) for n, t in total.items()}
    if count_noise_std > 0:
        unclipped += float(np.random.default_rng(secrets.randbits(64)).normal(0.0, count_noise_std))
    return SiloReply(total, len(chosen), loss, unclipped)


def _masked_rows(table: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return table * mask.reshape(-1, *([1] * (table.dim() - 1)))


class UserLevelDPFedSGD(OneReleasePerRound):
    name = USER_LEVEL

    def __init__(self, privacy, run):
        super().__init__(privacy, run)
        self.silos: list[int] = []
        p, users = privacy, run.users
        if not users:
            raise UserError(
                "--privacy user-level needs the number of users of the federation, and the server's data holds none: "
                "give the server the dataset (not an export's server folder)"
            )
        self.public = public_users(users, p.public_users, run.seed)
        users -= len(self.public)  # the claim covers the private users only
        self.users = users
        rate = min(1.0, p.users_per_round / users)
        delta = p.delta if p.delta is not None else default_delta(users)
        check_delta(delta, users, "the federation")
        self.selection: ItemSelection | None = None  # the item rows that train (--item-rows), once released
        self.selection_noise = _selection_noise(p)
        prior = ({"round": 0, "noise_multiplier": self.selection_noise, "sample_rate": 1.0, "steps": 1},)
        prior = prior if p.item_rows is not None else ()
        sigma = p.noise_multiplier
        if sigma is None:
            records = tuple((r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in prior)
            sigma = calibrate_noise_after(records, p.epsilon, delta, rate, run.horizon, p.accountant)
        self.accountant = CentralAccountant(sigma, rate, delta, p.accountant, prior)
        self.adaptive = None
        self.sum_noise = sigma
        if p.clip_quantile is not None:
            self.adaptive = QuantileClip(p.max_grad_norm, p.clip_quantile, p.clip_lr, rate * users)
            self.sum_noise = sum_noise_multiplier(sigma, self.adaptive.count_noise)
        self.round_clip = p.max_grad_norm

    def prepare_model(self, model, sequences, split, fit, seed: int, protocol: str = "full") -> str | None:
        if not len(self.public):
            return None
        chosen = self.run.selection
        done = pretrain_on_public(
            model, sequences, split, self.public, fit, self.privacy.public_epochs, seed, protocol, chosen
        )
        return (
            f"initial model trained on the {len(self.public)} public users: epoch {done.best_epoch} of {done.epochs} "
            f"kept (their own validation {chosen} {done.valid_score:.4f}, loss {done.loss:.3f})"
        )

    def prepare_release(self, sequences, split, saved: str | None = None) -> str | None:
        if self.privacy.item_rows is None:
            return None
        self.selection = self._saved_selection(saved)
        if self.selection is None:
            private = np.setdiff1d(np.arange(1, sequences.n_users + 1), self.public)
            counts = item_counts(sequences, split, private)
            self.selection = select_items(counts, self.privacy.item_rows, self.selection_noise)
        return (
            f"item rows: {len(self.selection.rows)} of {sequences.n_items} items train, chosen from item counts "
            f"released with noise multiplier {self.selection_noise:.4g} (in the ledger)"
        )

    def start(self, n_clients: int, saved: str | None, last_round: int) -> None:
        self.silos = list(range(n_clients))
        self.selection = self._saved_selection(saved) or self.selection
        self.restore(saved, last_round)
        if self.adaptive is not None and self.history:
            self.adaptive.clip = self.history[-1]["next_clip"]

    @property
    def noise_std(self) -> float:
        """The noise on the sum: z times its sensitivity, the clipping norm plus, when the server adds the noise to a
        sum that secure aggregation quantised, what the rounding can add (``privacy.quantised_sum``)."""
        rounding = self.run.secure_rounding if self.privacy.noise_shares == "server" else 0.0
        return self.sum_noise * (self.round_clip + rounding)

    def message_config(self) -> dict:
        """What every silo needs: the sampling rate, this round's clipping norm, and (clients mode) the standard
        deviations of its shares of the noise."""
        shares = 1 / math.sqrt(len(self.silos)) if self.privacy.noise_shares == "clients" else 0.0
        count_noise = self.adaptive.count_noise if self.adaptive is not None else 0.0
        sent = {
            "user-rate": self.accountant.rate,
            "noise-share-std": self.noise_std * shares,
            "clip-norm": self.round_clip,
            "count-noise-share-std": count_noise * shares,
        }
        if self.selection is not None:
            sent["item-rows"] = [int(r) for r in self.selection.rows]
        return sent

    def aggregate_class(self, strategy_class: type) -> type:
        return with_noisy_sum(strategy_class)

    def aggregate_options(self) -> dict:
        return {
            "keys": list(self.run.trainable),
            "expected_users": self.accountant.rate * self.users,
            "noise_std": lambda: self.noise_std if self.privacy.noise_shares == "server" else 0.0,
            "rows": self.training_rows,
        }

    def training_rows(self) -> dict[str, np.ndarray]:
        """Per item table the run trains, the rows that train (none listed: every row of every table)."""
        if self.selection is None:
            return {}
        return {key: self.selection.rows for key in self.run.item_tables if key in self.run.trainable}

    def reply_arrays(self, keys: list[str]) -> tuple[list[str], bool]:
        return list(self.run.trainable), False  # each silo's clipped gradient sum (and noise share)

    def to_aggregate(self, replies: list) -> list:
        return list(replies)  # a silo that sampled nobody still sends its (zero) sum and its noise share

    def choose(self, available: list[int], server_round: int, sample) -> list[int]:
        self.check_budget()
        if self.adaptive is not None:
            self.round_clip = self.adaptive.clip
        return available  # every silo, every round: the users are what is sampled

    def reply_problem(self, server_round: int, metrics) -> str | None:
        return number_problem(metrics, "sampled-users", low=0, whole=True) or number_problem(
            metrics, "unclipped-centred"
        )

    def observe(self, server_round: int, replies: list) -> dict:
        sampled = sum(int(r.content["metrics"].get("sampled-users", 0)) for r in replies)
        seen = {**super().observe(server_round, replies), "sampled_users": sampled}
        if self.adaptive is not None:
            count = sum(float(r.content["metrics"].get("unclipped-centred", 0.0)) for r in replies)
            if self.privacy.noise_shares == "server":
                count += float(np.random.default_rng(secrets.randbits(64)).normal(0.0, self.adaptive.count_noise))
            share = self.adaptive.update(count)
            self.history[-1].update(clip=self.round_clip, unclipped_share=share, next_clip=self.adaptive.clip)
            seen.update(clip=round(self.round_clip, 6), unclipped_share=round(share, 4))
        return seen

    def min_updates(self, chosen: int) -> int:
        # Noise shares: every silo's share is needed, or the release is less noisy than accounted.
        return chosen if self.privacy.noise_shares == "clients" else self.run.min_clients

    def state(self) -> str:
        a, p = self.accountant, self.privacy
        entry = self.entry()
        trust = _trust(p.noise_shares, self.run.secure, self.run.secure_rounding)
        return dumps(  # (a non-finite figure is written as null)
            {
                "mechanism": self._mechanism_text(),
                "privacy_unit": "user-level, federation-wide: adding or removing one user of the whole federation, "
                "with all of their events; one guarantee for every user, whatever silo holds them"
                + (f", except the {len(self.public)} users declared public" if len(self.public) else ""),
                "public_users": {
                    "count": int(len(self.public)),
                    "share": p.public_users,
                    "use": "trained the initial model before round 1; never sampled; not covered by this guarantee",
                }
                if len(self.public)
                else None,
                "sampling": f"Poisson, each user with rate q = {a.rate:.6g} per round (users-per-round / users)",
                "trust": trust,
                "noise_shares": p.noise_shares,
                "item_selection": self._selection_record(),
                "clients": {str(c): entry for c in self.silos},
                "history": self.history,
            }
        )

    def _saved_selection(self, saved: str | None) -> ItemSelection | None:
        found = json.loads(saved).get("item_selection") if saved else None
        if found is None or self.privacy.item_rows is None:
            return None
        return ItemSelection(np.asarray(found["rows"], dtype=np.int64), self.selection_noise)

    def _selection_record(self) -> dict | None:
        if self.selection is None:
            return None
        return {
            "mechanism": "each private user counts 1/√n for each of their n distinct training items (ℓ2 sensitivity "
            f"1); the counts got Gaussian noise of σ = {self.selection.noise_multiplier:.4g} once, before round 1 "
            "(the ledger's round-0 record); the rows of the items with the largest noisy counts are the only item "
            "rows trained: the others get no update and no noise",
            "count": len(self.selection.rows),
            "rows": [int(r) for r in self.selection.rows],
        }

    def _mechanism_text(self) -> str:
        p = self.privacy
        contribution = (
            "DP-FedSGD across silos (each sampled user's gradient at the global model"
            if p.user_steps == 1
            else f"DP-FedAvg across silos (the mean gradient along {p.user_steps} local SGD steps of rate "
            f"{p.user_lr:g} each sampled user takes alone"
        )
        clipping = "clipped to C as a whole" if p.clipping == "flat" else "clipped per layer, budgets adding up to C²"
        norm = f"C = {p.max_grad_norm:g}"
        if self.adaptive is not None:
            norm = (
                f"C adaptive from {p.max_grad_norm:g} towards the norm that leaves a share {p.clip_quantile:g} of "
                f"users unclipped (rate {p.clip_lr:g}; that share is counted with noise σ_b = "
                f"{self.adaptive.count_noise:.4g} users, and the sum's noise multiplier is σ_Δ = "
                f"{self.sum_noise:.4g} so that the pair costs the accounted σ = {self.accountant.noise:.4g})"
            )
        return (
            f"user-level {contribution}, {clipping}, {norm}); the server adds Gaussian noise of σ·C once to the sum "
            "over all silos and divides by the expected number of sampled users"
        )

    def summary(self) -> dict:
        return {**super().summary(), "noise_shares": self.privacy.noise_shares}


# The item counts' default noise multiplier: 40 / ε (5 at ε = 8), so that they cost about the same small part of the
# budget at every ε (a Gaussian's Rényi divergence goes as 1/σ², the rounds' ε about as 1/σ); 5 when the run gives
# --noise-multiplier instead of a target.
SELECTION_NOISE_TIMES_EPSILON, SELECTION_NOISE = 40.0, 5.0


def _selection_noise(privacy: PrivacyConfig) -> float:
    """The item counts' noise multiplier: given, or the default for the run's target."""
    if privacy.selection_noise is not None:
        return privacy.selection_noise
    if privacy.epsilon is None:
        return SELECTION_NOISE
    return SELECTION_NOISE_TIMES_EPSILON / privacy.epsilon


def _trust(noise_shares: str, secure: bool, rounding: float = 0.0) -> str:
    """Whom the guarantee asks users to trust, in the report's words."""
    if noise_shares == "server":
        return "trusted aggregator: the server adds the noise and sees the exact sum of clipped gradients" + (
            " (secure aggregation hides each silo's sum, not their total; the noise is σ·(C + "
            f"{rounding:.3g}), the sum's sensitivity once quantised: {WHY})"
            if secure
            else " of every silo"
        )
    if secure:
        return (
            "noise shares under secure aggregation (SecAgg+): each silo adds N(0, σ²C²/K) to its sum and the server "
            "learns only the total, whose noise is the accounted σ²C²; it learns nothing of one silo's sum unless it "
            "colludes with the reconstruction threshold of silos, and a round a silo drops out of fails before the "
            "sum is unmasked. Not accounted: SecAgg+ rounds each silo's noisy sum to its grid (at most "
            f"{rounding:.3g} in ℓ2 a silo), after the noise, which the Gaussian mechanism's analysis does not cover"
        )
    return (
        "noise shares: each silo adds N(0, σ²C²/K) to its sum; the total is private, a single silo's sum is not — "
        "users are protected only if the server combines the sums under secure aggregation and never sees one "
        "alone (this run does not use --secure-aggregation)"
    )
