"""The privacy options of a federated run, and the choice of mechanism they make (importable without torch)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from fedseqrec.errors import UserError
from fedseqrec.options import check, option, positive, positive_int, span, within

ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks")
CENTRAL_NORMS = ("fixed", "adaptive")
CLIPPING_SIDES = ("server", "client")
DPSGD = "differential privacy (DP-SGD at each client; the privacy unit is one user)"
CENTRAL = "central differential privacy (DP-FedAvg; one user per client: --partition per-user)"
USER = (
    "federation-wide user-level differential privacy (DP-FedSGD across silos; one user of the federation is the unit)"
)
NOISE_SHARES = ("server", "clients")
# The model a run releases (model.pt): the last round's, or the round with the best validation figure.
LAST, BEST_VALIDATION = "last", "best-validation"
RELEASES = (LAST, BEST_VALIDATION)
CLIPPING = ("flat", "per-layer")

# The mechanisms a run can use (``--privacy``), by the name their registry (fedseqrec.federated.mechanisms) knows
# them by.
NO_DP, LOCAL_DPSGD, DP_FEDAVG, USER_LEVEL = "none", "dp-sgd", "dp-fedavg", "user-level"
MECHANISMS = (NO_DP, LOCAL_DPSGD, DP_FEDAVG, USER_LEVEL)
PRIVACY = "privacy"


def default_delta(users: int) -> float:
    """δ well below 1 / users: a mechanism that leaks one user's data entirely with probability δ is excluded."""
    return min(1e-5, 0.1 / max(1, users))


def check_delta(delta: float, users: int, who: str) -> None:
    if users and delta >= 1.0 / users:
        raise UserError(
            f"--delta {delta} is not below 1 / {users} (the users of {who}): such a δ allows leaking a whole "
            "user's data; choose a smaller one"
        )


@dataclass
class PrivacyConfig:
    mechanism: str = option(
        NO_DP,
        "the privacy mechanism: none; dp-sgd (DP-SGD inside each client, the default when --epsilon or "
        "--noise-multiplier is given); dp-fedavg (clipped client updates, a noisy sum; one user per client); "
        "user-level (one user of the whole federation is the unit, across silos)",
        choices=MECHANISMS,
        key="privacy",
        group=PRIVACY,
    )
    release: str | None = option(
        None,
        "the model the run releases (model.pt): last = the last round's, a choice that reads no user data (the "
        "default of a private run); best-validation = the round with the best validation figure, read in the clear "
        "(the default without privacy; with privacy the choice is outside the guarantee and the report says so)",
        choices=RELEASES,
        group=PRIVACY,
    )
    noise_multiplier: float | None = option(None, "noise multiplier σ instead of --epsilon", group=DPSGD)
    epsilon: float | None = option(
        None, "target ε per client for the whole run: the noise is calibrated", check=positive, group=DPSGD
    )
    horizon: int | None = option(
        None,
        "rounds the --epsilon target is calibrated for (default: --rounds); recorded in the run and kept on resume",
        check=positive_int,
        group=DPSGD,
    )
    max_grad_norm: float = option(
        1.0, "per-user gradient clipping norm", check=positive, group=DPSGD, search=span(0.05, 5.0, log=True)
    )
    delta: float | None = option(
        None, "δ (default: min(1e-5, 0.1 / users in the client))", check=within(0, 1, low_open=True), group=DPSGD
    )
    budget: float | None = option(
        None, "ε a client may spend; it declines rounds beyond (default: --epsilon)", check=positive, group=DPSGD
    )
    accountant: str = option("rdp", "Opacus accountant for ε", choices=ACCOUNTANTS, group=DPSGD)
    grad_sample_mode: str = option(
        "auto",
        "Opacus per-sample gradients: auto = ghost clipping for the Transformers, hooks for the recurrent models",
        choices=GRAD_SAMPLE_MODES,
        group=DPSGD,
    )
    central_norm: str = option(
        "fixed",
        "the clipping norm is fixed (--clipping-norm), or adapted towards --target-quantile",
        choices=CENTRAL_NORMS,
        group=CENTRAL,
    )
    central_noise: float | None = option(None, "noise multiplier z of the aggregate", group=CENTRAL)
    clipping_norm: float = option(
        1.0, "update norm (adaptive: initial)", check=positive, group=CENTRAL, search=span(0.05, 5.0, log=True)
    )
    central_clipping: str = option("server", "where updates are clipped", choices=CLIPPING_SIDES, group=CENTRAL)
    target_quantile: float = option(0.5, "adaptive: unclipped share", check=within(0, 1, low_open=True), group=CENTRAL)
    clip_lr: float = option(0.2, "adaptive: clipping norm learning rate", check=positive, group=CENTRAL)

    users_per_round: int | None = option(
        None, "expected users a round (Poisson sampling rate q = this / users)", check=positive_int, group=USER
    )
    noise_shares: str = option(
        "server",
        "who adds the noise: server (a trusted aggregator sees the silo sums), or clients (each of K silos adds "
        "N(0, σ²C²/K): private only when the silo sums are combined by secure aggregation)",
        choices=NOISE_SHARES,
        group=USER,
    )
    user_steps: int = option(
        1,
        "local SGD steps each sampled user takes alone from the global model: 1 = their gradient (DP-FedSGD), more "
        "= user-level DP-FedAvg (the mean gradient along the steps is what is clipped)",
        check=positive_int,
        group=USER,
        search=span(1, 4),
    )
    user_lr: float = option(
        0.1,
        "rate of those local steps (with --user-steps > 1)",
        check=positive,
        group=USER,
        search=span(0.01, 1.0, log=True),
    )
    clipping: str = option(
        "flat",
        "clip each user's contribution as a whole, or per layer (each top-level module to C·√(its share of the "
        "parameters): the squared budgets add up to C²)",
        choices=CLIPPING,
        group=USER,
    )
    public_users: float = option(
        0.0,
        "share of users declared public (opted in): the initial model is trained on them (--public-epochs), and "
        "they are left out of the private training and of the privacy claim",
        check=within(0, 1, high_open=True),
        group=USER,
    )
    public_epochs: int = option(
        40,
        "most epochs of training on the public users (the best by their own validation items is kept; it stops "
        "after 10 epochs without a better one)",
        check=positive_int,
        group=USER,
    )
    clip_quantile: float | None = option(
        None,
        "adaptive clipping: steer C (from --max-grad-norm, at rate --clip-lr) so that this share of users is not "
        "clipped; the share is itself noised and accounted (Andrew et al. 2021)",
        check=within(0, 1, low_open=True, high_open=True),
        group=USER,
    )

    item_rows: int | None = option(
        None,
        "train only the rows of the K items most users hold, chosen from item counts released once with noise "
        "(--selection-noise, in the ledger); every other item row gets no update and no noise (DP-FEST); default: "
        "every row",
        check=positive_int,
        group=USER,
    )
    selection_noise: float | None = option(
        None,
        "--item-rows: noise multiplier of the item counts (each user counts 1/√n for each of their n distinct "
        "training items: sensitivity 1); default: 40 / --epsilon (5 at ε = 8: a small part of the budget at every ε), "
        "5 with --noise-multiplier",
        check=positive,
        group=USER,
    )

    @property
    def private(self) -> bool:
        return self.mechanism != NO_DP

    @property
    def released(self) -> str:
        """The release rule in force: the one given, else last for a private run and best-validation without."""
        if self.release is not None:
            return self.release
        return LAST if self.private else BEST_VALIDATION

    def budget_or_target(self) -> float | None:
        return self.budget if self.budget is not None else self.epsilon

    def implied(self) -> PrivacyConfig:
        """``--epsilon`` or ``--noise-multiplier`` without a mechanism ask for DP-SGD at the clients; the release
        rule follows from the mechanism (recorded, so that a resume keeps it)."""
        asked = self.epsilon is not None or self.noise_multiplier is not None
        cfg = replace(self, mechanism=LOCAL_DPSGD) if asked and self.mechanism == NO_DP else self
        return replace(cfg, release=cfg.released)

    def validate(
        self,
        strategy: str,
        clients_per_round: int | None,
        model: str,
        ghost_safe,
        loss: str,
        tied: bool = False,
        precision: str = "fp32",
    ) -> None:
        """``ghost_safe``: a callable telling whether ``model`` may use ghost clipping (it imports the model);
        ``tied``: the model scores items with its embedding table (``--tie-items``); ``precision``: ``--precision``."""
        check(self)
        self._refuse_others_options()
        if precision != "fp32" and self.mechanism in (LOCAL_DPSGD, USER_LEVEL):
            raise UserError(
                f"--precision {precision} with --privacy {self.mechanism}: per-user gradients are clipped and noised "
                "in float32 (a bfloat16 norm is off by up to 1 %, and the clipping bound is what the privacy "
                "guarantee rests on); use --precision fp32"
            )
        if self.mechanism == DP_FEDAVG:
            self._validate_dp_fedavg(strategy, clients_per_round)
            return
        if self.mechanism == USER_LEVEL:
            self._validate_user_level(strategy, clients_per_round)
            return
        given = [n for n in DPSGD_NOISE_OPTIONS if getattr(self, n) is not None]
        if self.mechanism == NO_DP:
            if given:
                raise UserError(f"--{given[0].replace('_', '-')} needs --privacy dp-sgd or user-level")
            return
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise UserError(
                "--privacy dp-sgd needs exactly one of --noise-multiplier and --epsilon (a target for the whole run)"
            )
        if self.noise_multiplier is not None and positive(self.noise_multiplier):
            raise UserError(f"--noise-multiplier must be a positive number, got {self.noise_multiplier}")
        if self.horizon is not None and self.epsilon is None:
            raise UserError("--horizon is the number of rounds an --epsilon target is calibrated for: give --epsilon")
        if self.epsilon is not None and self.budget is not None and self.budget < self.epsilon:
            raise UserError(f"--budget {self.budget} is below the target --epsilon {self.epsilon}")
        if strategy == "fedprox":
            raise UserError(
                "fedprox's proximal term is not supported with --privacy dp-sgd yet: use fedavg, fedadam or fedavgm"
            )
        if self.grad_sample_mode == "ghost" and not ghost_safe():
            raise UserError(
                f"--grad-sample-mode ghost is not correct for {model}: its recurrent cell is called once per time "
                "step and Opacus' ghost clipping would see only one call; use hooks (or auto)"
            )
        if loss == "sampled":
            raise UserError("the sampled loss is not supported with --privacy dp-sgd: use --loss ce")
        if tied:
            raise UserError(
                "--tie-items is not supported with --privacy dp-sgd (Opacus would not clip the tied scores)"
            )

    def _refuse_others_options(self) -> None:
        """An option of one mechanism given to another is a mistake the user should hear about."""
        owned = ((USER_LEVEL, USER_LEVEL_ONLY), (DP_FEDAVG, DP_FEDAVG_ONLY))
        for mechanism, options in owned:
            if self.mechanism == mechanism:
                continue
            for name, default in options.items():
                if getattr(self, name) != default:
                    raise UserError(f"--{name.replace('_', '-')} needs --privacy {mechanism}")

    def _validate_user_level(self, strategy: str, clients_per_round: int | None) -> None:
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise UserError("--privacy user-level needs exactly one of --noise-multiplier and --epsilon")
        if self.noise_multiplier is not None and positive(self.noise_multiplier):
            raise UserError(f"--noise-multiplier must be a positive number, got {self.noise_multiplier}")
        if self.users_per_round is None:
            raise UserError("--privacy user-level needs --users-per-round (the expected number of users a round)")
        if clients_per_round is not None:
            raise UserError(
                "--privacy user-level samples users, not silos: every silo takes part in every round "
                "(drop --clients-per-round)"
            )
        if strategy == "fedprox":
            raise UserError(
                "--privacy user-level applies the noisy gradient with fedavg (SGD), fedadam, fedyogi, "
                "fedadagrad or fedavgm, not fedprox"
            )
        if self.epsilon is not None and self.budget is not None and self.budget < self.epsilon:
            raise UserError(f"--budget {self.budget} is below the target --epsilon {self.epsilon}")
        if self.item_rows is not None and self.noise_shares == "clients":
            raise UserError(
                "--item-rows is chosen by the server from the users' item counts, which --noise-shares clients keeps "
                "from it: use --noise-shares server"
            )

    def _validate_dp_fedavg(self, strategy: str, clients_per_round: int | None) -> None:
        given = [n for n in ("noise_multiplier", "epsilon", "horizon") if getattr(self, n) is not None]
        if given:
            raise UserError(
                f"--{given[0].replace('_', '-')} is not an option of --privacy dp-fedavg (its noise is --central-noise)"
            )
        if self.central_noise is None or positive(self.central_noise):
            raise UserError(
                f"--privacy dp-fedavg needs --central-noise, a positive noise multiplier (got {self.central_noise})"
            )
        if clients_per_round is None:
            raise UserError("--privacy dp-fedavg needs --clients-per-round (the expected number of clients a round)")
        if strategy != "fedavg":
            raise UserError("--privacy dp-fedavg works with --strategy fedavg (DP-FedAvg)")
        if self.central_norm == "adaptive" and self.central_noise >= 2 * (clients_per_round / 20):
            raise UserError(
                f"--central-noise {self.central_noise} is too large for adaptive clipping with "
                f"{clients_per_round} clients a round: the clipped-count noise "
                f"(clients-per-round / 20 = {clients_per_round / 20:g}) "
                f"must exceed half of it; sample more clients a round or use --central-norm fixed"
            )


DPSGD_NOISE_OPTIONS = ("noise_multiplier", "epsilon", "delta", "budget", "horizon")  # unset unless a noisy sum
USER_LEVEL_ONLY = {  # options of the federation-wide mechanism, with their defaults
    "users_per_round": None,
    "user_steps": 1,
    "user_lr": 0.1,
    "clipping": "flat",
    "public_users": 0.0,
    "public_epochs": 40,
    "clip_quantile": None,
    "item_rows": None,
    "selection_noise": None,
}
DP_FEDAVG_ONLY = {  # options of DP-FedAvg, with their defaults
    "central_noise": None,
    "central_norm": "fixed",
    "clipping_norm": 1.0,
    "central_clipping": "server",
    "target_quantile": 0.5,
}


def privacy_switches_to_mechanism(values: Mapping) -> Mapping:
    """fedseqrec 0.1 named the mechanism by three switches (``dp``, ``user-dp``, ``central-dp fixed|adaptive``):
    the one ``privacy`` key that replaced them, so that older run folders are still read."""
    old = {k: values[k] for k in ("dp", "user-dp", "central-dp") if k in values}
    if not old:
        return values
    if "privacy" in values:
        raise UserError(f"the run config has both privacy and the switches it replaced ({', '.join(old)})")

    def on(key: str) -> bool:
        return str(old.get(key, "")).lower() in ("true", "1")

    central = str(old.get("central-dp", ""))
    new = {k: v for k, v in values.items() if k not in old}
    new["privacy"] = LOCAL_DPSGD if on("dp") else USER_LEVEL if on("user-dp") else DP_FEDAVG if central else NO_DP
    if central:
        new["central-norm"] = central
    return new
