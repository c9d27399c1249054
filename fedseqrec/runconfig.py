"""The federated run configuration: one flat, typed dataclass shared by the ServerApp, the ClientApp and the CLI.

Its defaults are mirrored in ``pyproject.toml`` under ``[tool.flwr.app.config]`` (a test keeps them equal), so
``flwr run .`` and ``fedseqrec simulate`` agree. Flower's run config is flat and TOML has no null: field names are
written with hyphens, and an optional field that is unset is the empty string ``""``.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields

from fedseqrec.data.dataset import DataConfig
from fedseqrec.data.partition import SCHEMES
from fedseqrec.data.shop import ShopConfig
from fedseqrec.errors import UserError
from fedseqrec.evaluation.protocols import PROTOCOLS
from fedseqrec.models.config import MODEL_NAMES, ModelConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
EVALUATIONS = ("centralized", "federated", "both")


@dataclass
class FederationConfig:
    # data: what each client reads, and how users are split into clients
    data: str = "shop"
    format: str = "auto"
    seed: int = 0
    columns: str | None = None
    sep: str | None = None
    time_unit: str = "auto"
    min_rating: float | None = None
    user_core: int = 0
    item_core: int = 0
    split: str = "leave-one-out"
    valid_quantile: float = 0.8
    test_quantile: float = 0.9
    partition: str = "iid"
    clients: int | None = None  # unset: one client per SuperNode (Flower's num-partitions)
    alpha: float = 0.5
    attribute: str | None = None
    category: str | None = None
    shop_users: int = 1000
    shop_items: int = 1000
    shop_categories: int = 20
    shop_days: int = 60
    # model
    model: str = "sasrec"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    max_len: int = 50
    side_info: bool = True
    mask_ratio: float = 0.2
    loss: str = "ce"
    negatives: int = 100
    label_smoothing: float = 0.2
    # federation
    strategy: str = "fedavg"
    rounds: int = 20
    clients_per_round: int | None = None  # unset: every available client
    min_clients: int = 1  # fewer successful replies than this ends the run (it stays resumable)
    round_timeout: float | None = None  # seconds to wait for replies; unset: wait for all
    # local training at each client
    local_epochs: int = 1
    local_steps: int | None = None  # set: this many steps per round instead of epochs
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1.0
    window: str = "random"
    threads: int = 1  # torch threads per client (simulated clients run side by side)
    # strategy knobs
    proximal_mu: float = 0.01  # fedprox
    server_lr: float | None = None  # fedadam/fedyogi/fedadagrad eta, fedavgm server learning rate
    server_momentum: float = 0.9  # fedavgm
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    # evaluation
    evaluation: str = "centralized"
    eval_every: int = 1
    fraction_evaluate: float = 1.0  # federated evaluation: share of clients asked
    protocol: str = "full"
    # differential privacy: DP-SGD at each client, user-level (one example = one user's sequence)
    dp: bool = False
    noise_multiplier: float | None = None  # set: this noise; unset: calibrated from epsilon for the planned run
    epsilon: float | None = None  # target ε of each client over all --rounds
    max_grad_norm: float = 1.0
    delta: float | None = None  # unset: min(1e-5, 0.1 / users in the client)
    budget: float | None = None  # a client declines a round that would take its ε above this; unset: epsilon
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"  # auto: ghost clipping for Transformers, hooks for GRU/LSTM
    # central DP (DP-FedAvg): clipped client updates, server noise, Poisson client sampling
    central_dp: str | None = None  # fixed or adaptive clipping
    central_noise: float | None = None  # noise multiplier z of the aggregate
    clipping_norm: float = 1.0  # fixed: the norm; adaptive: the initial norm
    central_clipping: str = "server"  # where updates are clipped: server, or client (Flower's clipping mods)
    target_quantile: float = 0.5  # adaptive: share of updates left unclipped
    clip_lr: float = 0.2  # adaptive: learning rate of the clipping norm
    # output
    out: str | None = None  # run folder; unset: runs/<strategy>-<model>-<time>

    @classmethod
    def from_run_config(cls, values: typing.Mapping) -> FederationConfig:
        """From Flower's run config (hyphenated keys, ``""`` for unset); unknown keys are refused."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown run-config keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        kwargs = {known[key].name: _coerce(key, value, hints[known[key].name]) for key, value in values.items()}
        return cls(**kwargs)

    def to_run_config(self) -> dict:
        return {k.replace("_", "-"): ("" if v is None else v) for k, v in asdict(self).items()}

    def data_config(self) -> DataConfig:
        return DataConfig(
            data=self.data,
            format=self.format,
            seed=self.seed,
            columns=self.columns,
            sep=self.sep,
            time_unit=self.time_unit,
            min_rating=self.min_rating,
            user_core=self.user_core,
            item_core=self.item_core,
            split=self.split,
            valid_quantile=self.valid_quantile,
            test_quantile=self.test_quantile,
            partition=self.partition,
            clients=self.clients,
            alpha=self.alpha,
            attribute=self.attribute,
            category=self.category,
            shop=ShopConfig(
                users=self.shop_users, items=self.shop_items, categories=self.shop_categories, days=self.shop_days
            ),
        )

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(asdict(self))

    def validate(self) -> None:
        _choice("model", self.model, [m for m in MODEL_NAMES if m != "pop"])
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("partition", self.partition, SCHEMES)
        _choice("evaluation", self.evaluation, EVALUATIONS)
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("window", self.window, ("random", "recent"))
        for name in ("rounds", "local_epochs", "batch_size", "eval_every", "min_clients"):
            _positive(name, getattr(self, name))
        for name in ("clients", "clients_per_round", "local_steps"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("lr", "tau", "round_timeout", "server_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{_flag(name)} must be a positive number, got {value}")
        for name in ("proximal_mu", "weight_decay", "server_momentum"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("beta_1", "beta_2", "server_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.fraction_evaluate <= 1:
            raise UserError(f"--fraction-evaluate must be in (0, 1], got {self.fraction_evaluate}")
        if self.clients_per_round is not None and self.clients is not None and self.clients_per_round > self.clients:
            raise UserError(f"--clients-per-round {self.clients_per_round} is more than --clients {self.clients}")
        if self.clients_per_round is not None and self.min_clients > self.clients_per_round:
            raise UserError(
                f"--min-clients {self.min_clients} is more than --clients-per-round {self.clients_per_round}"
            )
        ModelConfig.from_dict({**asdict(self), "n_items": 1}).validate()  # item count comes from the data
        self.validate_privacy()

    def validate_privacy(self) -> None:
        from fedseqrec.privacy.accounting import ACCOUNTANTS
        from fedseqrec.privacy.dpsgd import GRAD_SAMPLE_MODES, grad_sample_mode_for

        _choice("accountant", self.accountant, ACCOUNTANTS)
        _choice("grad-sample-mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        if self.central_dp is not None:
            self.validate_central_dp()
            return
        if self.central_noise is not None:
            raise UserError("--central-noise needs --central-dp fixed or adaptive")
        given = [n for n in ("noise_multiplier", "epsilon", "delta", "budget") if getattr(self, n) is not None]
        if not self.dp:
            if given:
                raise UserError(f"--{_flag(given[0])} needs --dp (differentially private training)")
            return
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise UserError("--dp needs exactly one of --noise-multiplier and --epsilon (a target for the whole run)")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise UserError(f"--noise-multiplier must be a positive number, got {self.noise_multiplier}")
        for name in ("epsilon", "budget", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{_flag(name)} must be a positive number, got {value}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {self.delta}")
        if self.epsilon is not None and self.budget is not None and self.budget < self.epsilon:
            raise UserError(f"--budget {self.budget} is below the target --epsilon {self.epsilon}")
        if self.strategy == "fedprox":
            raise UserError("fedprox's proximal term is not supported with --dp yet: use fedavg, fedadam or fedavgm")
        grad_sample_mode_for(self.model, self.grad_sample_mode)
        if self.loss == "sampled":
            raise UserError("the sampled loss is not supported with --dp: use --loss ce")

    def validate_central_dp(self) -> None:
        from fedseqrec.privacy.central import CENTRAL_DP, CLIPPING_SIDES

        _choice("central-dp", self.central_dp, CENTRAL_DP)
        _choice("central-clipping", self.central_clipping, CLIPPING_SIDES)
        if self.dp:
            raise UserError("choose one mechanism: --dp (DP-SGD at the clients) or --central-dp (DP-FedAvg)")
        if self.central_noise is None or not (math.isfinite(self.central_noise) and self.central_noise > 0):
            raise UserError(
                f"--central-dp needs --central-noise, a positive noise multiplier (got {self.central_noise})"
            )
        if self.clients_per_round is None:
            raise UserError("--central-dp needs --clients-per-round (the expected number of clients a round)")
        if self.strategy != "fedavg":
            raise UserError("--central-dp works with --strategy fedavg (DP-FedAvg)")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise UserError(f"--clipping-norm must be a positive number, got {self.clipping_norm}")
        if not 0 < self.target_quantile < 1 or not self.clip_lr > 0:
            raise UserError("--target-quantile must be in (0, 1) and --clip-lr positive")
        if self.delta is not None and not 0 < self.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {self.delta}")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise UserError(f"--budget must be a positive number, got {self.budget}")
        if self.central_dp == "adaptive" and self.central_noise >= 2 * (self.clients_per_round / 20):
            raise UserError(
                f"--central-noise {self.central_noise} is too large for adaptive clipping with "
                f"{self.clients_per_round} clients a round: the clipped-count noise "
                f"(clients-per-round / 20 = {self.clients_per_round / 20:g}) "
                f"must exceed half of it; sample more clients a round or use --central-dp fixed"
            )

    @property
    def private(self) -> bool:
        return self.dp or self.central_dp is not None

    def privacy_budget(self) -> float | None:
        return self.budget if self.budget is not None else self.epsilon


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{_flag(name)} must be a positive integer, got {value}")


def _coerce(key: str, value, hint):
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional:
        if value == "" or value is None:
            return None
        hint = next(a for a in hint.__args__ if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif hint is str and isinstance(value, str):
        return value
    elif hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)
        except ValueError:
            pass
    raise UserError(f"run-config {key} = {value!r}: expected {hint.__name__}" + (" or empty" if optional else ""))
