"""The configuration of a federated run, in sections — ``data``, ``model``, ``fit`` (local training at each client),
``algorithm`` (strategy and rounds), ``evaluation`` and ``privacy`` — shared by the ServerApp, the ClientApp and
the CLI.

Flower's run config is flat: each option's key is its flag without the dashes (``[tool.flwr.app.config]`` in
``pyproject.toml`` is generated from these declarations and a test keeps the two equal), so ``flwr run .`` and
``fedseqrec simulate`` agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from fedseqrec.data.dataset import DataConfig
from fedseqrec.errors import UserError
from fedseqrec.evaluation.config import EVALUATION, EvaluationConfig
from fedseqrec.federated.compression import CompressionConfig
from fedseqrec.models.config import (
    COUNTED_MODELS,
    FEDERATED_MODELS,
    FIT,
    TRAINABLE_MODELS,
    FitConfig,
    ModelConfig,
    linear_decay,
)
from fedseqrec.options import (
    check,
    flatten,
    non_negative,
    non_negative_int,
    option,
    positive,
    positive_int,
    section,
    span,
    unflatten,
    with_values,
    within,
)
from fedseqrec.privacy.config import DP_FEDAVG, LOCAL_DPSGD, USER_LEVEL, PrivacyConfig, privacy_switches_to_mechanism
from fedseqrec.privacy.cooccurrence_options import CooccurrenceConfig

# Byzantine-robust aggregation (Flower's): a coordinate-wise median or trimmed mean, or the updates nearest the
# others (Krum, Multi-Krum, Bulyan), instead of the weighted mean.
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", *ROBUST_STRATEGIES)
EVALUATIONS = ("centralized", "federated", "both")
FEDERATION = "federation"


@dataclass
class LocalTrainingConfig(FitConfig):
    """A client's training in one round: epochs (or steps) over its own users."""

    local_epochs: int = option(
        1, "passes over the client's users a round", check=positive_int, group=FIT, search=span(1, 3)
    )
    local_steps: int | None = option(None, "steps per round instead of --local-epochs", check=positive_int, group=FIT)
    # A fresh AdamW each round restarts its moments: its first steps are full-size steps in the direction of a few
    # batches' noise, which averaging over the silos cancels — progress lost every round (FedAvg on Beauty in
    # docs/explanations/benchmark-notes.md).
    keep_optimizer: bool = option(
        False,
        "each client keeps its AdamW moments from one round to its next (on the client, twice the model's "
        "size per client; a restarted client starts afresh); plain local training only",
        group=FIT,
    )


@dataclass
class AlgorithmConfig:
    strategy: str = option("fedavg", "aggregation strategy", choices=STRATEGIES, group=FEDERATION)
    rounds: int = option(20, "federated rounds", check=positive_int, group=FEDERATION)
    clients_per_round: int | None = option(
        None, "clients sampled per round (default: all)", check=positive_int, group=FEDERATION
    )
    # Fewer successful replies than this ends the run (it stays resumable).
    min_clients: int = option(
        1, "fewer successful clients in a round stops the run", check=positive_int, group=FEDERATION
    )
    client_pool: int | None = option(
        None,
        "simulation: serve the clients from this many simulated nodes, each message naming its client (default: "
        "one node per client, or a pool when there are thousands of clients); must hold a round's clients",
        check=positive_int,
        group=FEDERATION,
    )
    round_timeout: float | None = option(
        None, "seconds to wait for replies (default: no limit)", check=positive, group=FEDERATION
    )
    max_update_norm: float | None = option(
        None,
        "reject a client's update whose l2 norm (all arrays, against the weights sent) exceeds this",
        check=positive,
        group=FEDERATION,
    )
    # A ×1e30 update would wreck the global model for good: refused by default, relative to the model's own size
    # (an honest round moves the weights by a fraction of their norm).
    max_update_ratio: float = option(
        100.0,
        "reject a client's update whose l2 norm exceeds this multiple of the global model's norm (0: no bound; "
        "under --secure-aggregation the server sees no single update)",
        check=non_negative,
        group=FEDERATION,
    )
    trim_beta: float = option(
        0.2, "fedtrimmedavg: share of values cut at each end", check=within(0, 0.5, high_open=True), group=FEDERATION
    )
    byzantine_clients: int = option(
        0,
        "krum, multikrum, bulyan: malicious clients a round to tolerate (f)",
        check=non_negative_int,
        group=FEDERATION,
    )
    krum_select: int | None = option(
        None,
        "multikrum: updates kept and averaged (default: the round's updates minus --byzantine-clients)",
        check=positive_int,
        group=FEDERATION,
    )
    # FedAvg weights a client by its users; an item's rows are moved mostly by the few clients whose users hold it
    # and only slightly (negative samples) by the rest, so averaging over all of them shrinks its update.
    item_weighted: bool = option(
        False,
        "average each item's rows (embedding, scorer) over the clients by how often their training events "
        "hold that item, the rest by their users; clients report their item counts (no DP, no secure aggregation)",
        group=FEDERATION,
    )
    proximal_mu: float = option(0.01, "fedprox: weight of the proximal term", check=non_negative, group=FEDERATION)
    server_lr: float | None = option(
        None,
        "server learning rate: eta of fedadam/fedyogi/fedadagrad (default 0.01), fedavgm (default 1.0)",
        check=positive,
        group=FEDERATION,
        search=span(1e-3, 2.0, log=True),
    )
    server_momentum: float = option(0.9, "fedavgm: server momentum", check=within(0, 1), group=FEDERATION)
    beta_1: float = option(0.9, "fedadam/fedyogi: first-moment decay", check=within(0, 1), group=FEDERATION)
    beta_2: float = option(0.99, "fedadam/fedyogi: second-moment decay", check=within(0, 1), group=FEDERATION)
    tau: float = option(1e-3, "fedadam/fedyogi/fedadagrad: adaptivity", check=positive, group=FEDERATION)


def robust_minimum(strategy: str, byzantine: int) -> int:
    """Fewest updates a round the rule is defined for with ``byzantine`` malicious ones among them: Krum and
    Multi-Krum score each update by its n − f − 2 nearest others (n ≥ 2f + 3), Bulyan needs n ≥ 4f + 3 (El Mhamdi
    et al., 2018); a median or trimmed mean takes any number."""
    if strategy in ("krum", "multikrum"):
        return 2 * byzantine + 3
    if strategy == "bulyan":
        return 4 * byzantine + 3
    return 1


SECURE = "secure aggregation"


@dataclass
class SecureAggregationConfig:
    """SecAgg+ (Bell et al., 2020) as Flower implements it: the clients mask their quantised updates so that the
    server learns only their sum (``fedseqrec.server.secure_aggregation``)."""

    secure_aggregation: bool = option(
        False, "SecAgg+: the server learns only the sum of the round's updates, never one client's", group=SECURE
    )
    secagg_shares: int | None = option(
        None,
        "shares each client's secrets are split into, one per neighbour, itself included (default: every "
        "client of the round; fewer make SecAgg+ sparse)",
        check=lambda v: None if v >= 3 else "must be at least 3",
        group=SECURE,
    )
    secagg_threshold: float = option(
        0.6,
        "share of a client's neighbours that must stay to the end (the secrets need that many shares): "
        "higher resists more colluding clients, lower tolerates more dropouts",
        check=within(0, 1, low_open=True, high_open=False),
        group=SECURE,
    )
    secagg_clipping_range: float | None = option(
        None, "values clipped to +-this before quantising (default 8; counts: 1024)", check=positive, group=SECURE
    )
    secagg_max_weight: int | None = option(
        None,
        "largest num-examples a client may weigh with (default: the largest client of the partition the server "
        "computes, else the users of the federation)",
        check=positive_int,
        group=SECURE,
    )


@dataclass
class FederatedEvaluationConfig(EvaluationConfig):
    mode: str = option(
        "centralized",
        "centralized (server holds every user's held-out events) or federated (clients evaluate their own)",
        choices=EVALUATIONS,
        key="evaluation",
        group=EVALUATION,
    )
    fraction_evaluate: float = option(
        1.0, "federated: share of clients asked", check=within(0, 1, low_open=True, high_open=False), group=EVALUATION
    )


@dataclass
class RunConfig:
    data: DataConfig = section(lambda: DataConfig(partition="iid"))
    model: ModelConfig = section(ModelConfig)
    fit: LocalTrainingConfig = section(LocalTrainingConfig)
    algorithm: AlgorithmConfig = section(AlgorithmConfig)
    evaluation: FederatedEvaluationConfig = section(FederatedEvaluationConfig)
    privacy: PrivacyConfig = section(PrivacyConfig)
    secure: SecureAggregationConfig = section(SecureAggregationConfig)
    compression: CompressionConfig = section(CompressionConfig)
    cooccurrence: CooccurrenceConfig = section(CooccurrenceConfig)
    out: str | None = option(None, "run folder (default: runs/STRATEGY-MODEL-TIME)", metavar="DIR", group="run")

    @classmethod
    def of(cls, **values) -> RunConfig:
        """A run config with options set by name (``RunConfig.of(clients=3, lr=0.01)``)."""
        return with_values(cls(), values)

    def replace(self, **values) -> RunConfig:
        """A copy with options set by name (nested sections copied)."""
        return with_values(self, values)

    @classmethod
    def from_run_config(cls, values: Mapping) -> RunConfig:
        """From Flower's run config (hyphenated keys, ``""`` for unset); unknown keys are refused. Run configs
        written before ``--privacy`` (run folders of fedseqrec 0.1) are read too."""
        return unflatten(cls, privacy_switches_to_mechanism(values))

    def to_run_config(self) -> dict:
        return flatten(self)

    def validate(self) -> None:
        """Everything that can be checked without the data (the data's own checks come when it is loaded)."""
        check(self)
        self.model.check_options()
        algorithm = self.algorithm
        if self.model.name in COUNTED_MODELS:  # counted by the silos, released once (server.cooccurrence)
            mechanism, secure, per_round = (
                self.privacy.mechanism,
                self.secure.secure_aggregation,
                algorithm.clients_per_round,
            )
            self.cooccurrence.check_federation(mechanism, secure, self.evaluation.mode, per_round, self.data.audited)
            return
        if self.model.name not in TRAINABLE_MODELS:
            expected = ", ".join(FEDERATED_MODELS)
            raise UserError(f"model {self.model.name!r} cannot be trained federated; expected one of {expected}")
        clients = self.data.clients
        if algorithm.clients_per_round is not None and clients is not None and algorithm.clients_per_round > clients:
            raise UserError(f"--clients-per-round {algorithm.clients_per_round} is more than --clients {clients}")
        if algorithm.clients_per_round is not None and algorithm.min_clients > algorithm.clients_per_round:
            raise UserError(
                f"--min-clients {algorithm.min_clients} is more than --clients-per-round {algorithm.clients_per_round}"
            )
        pool, per_round = algorithm.client_pool, algorithm.clients_per_round
        if pool is not None and per_round is not None and pool < per_round and self.privacy.mechanism != DP_FEDAVG:
            raise UserError(f"--client-pool {pool} is fewer than --clients-per-round {per_round}")
        if clients is not None and algorithm.min_clients > clients:
            raise UserError(f"--min-clients {algorithm.min_clients} is more than --clients {clients}")
        self.model.check_training(self.fit.window, private=self.privacy.private)
        self._validate_robust(clients)
        self._validate_secure(clients)
        self._validate_keep_optimizer()
        self._validate_item_weighted()
        self._validate_lr_schedule()
        compression_problem = self.compression.problem(
            self.secure.secure_aggregation, self.privacy.mechanism, self.privacy.noise_shares, self.data.partition
        )
        if compression_problem:
            raise UserError(compression_problem)
        self.privacy.validate(
            algorithm.strategy,
            algorithm.clients_per_round,
            self.model.name,
            self._ghost_safe,
            self.model.loss,
            tied=self.model.tie_items,
            precision=self.fit.hardware.precision,
        )
        if self.privacy.item_rows is not None and self.model.freeze != "none":
            raise UserError(
                f"--item-rows chooses which item rows train, and --freeze {self.model.freeze} trains none: drop one"
            )

    def _validate_robust(self, clients: int | None) -> None:
        algorithm = self.algorithm
        if algorithm.strategy not in ROBUST_STRATEGIES:
            return
        if self.privacy.mechanism in (USER_LEVEL, DP_FEDAVG):
            raise UserError(
                f"--strategy {algorithm.strategy} does not combine with --privacy {self.privacy.mechanism}: its noise "
                "is calibrated to a sum of clipped updates, which a median or a selection is not; robust aggregation "
                "combines with --privacy dp-sgd (DP-SGD at the clients) or none"
            )
        per_round = algorithm.clients_per_round or clients
        needed = robust_minimum(algorithm.strategy, algorithm.byzantine_clients)
        if per_round is not None and per_round < needed:
            raise UserError(
                f"--strategy {algorithm.strategy} with --byzantine-clients {algorithm.byzantine_clients} needs at "
                f"least {needed} clients a round, the run has {per_round}"
            )

    def _validate_secure(self, clients: int | None) -> None:
        algorithm, privacy = self.algorithm, self.privacy
        if not self.secure.secure_aggregation:
            return
        clash = (
            f"--strategy {algorithm.strategy} (it needs each update in the clear)"
            if algorithm.strategy in ROBUST_STRATEGIES
            else "--privacy dp-fedavg (use --privacy user-level --noise-shares clients: noise added by the silos, "
            "summed securely)"
            if privacy.mechanism == DP_FEDAVG
            else "--max-update-norm (the server never sees one update)"
            if algorithm.max_update_norm is not None
            else "--client-pool (SecAgg+ keeps its keys per node: one node, one client)"
            if algorithm.client_pool is not None
            else None
        )
        if clash is not None:
            raise UserError(f"--secure-aggregation does not combine with {clash}")
        per_round = algorithm.clients_per_round or clients
        if per_round is not None and per_round < 3:
            raise UserError(f"--secure-aggregation needs at least 3 clients a round, the run has {per_round}")
        shares = self.secure.secagg_shares
        if shares is not None and per_round is not None and shares > per_round:
            raise UserError(f"--secagg-shares {shares} is more than the {per_round} clients of a round")

    def _validate_keep_optimizer(self) -> None:
        if not self.fit.keep_optimizer:
            return
        if self.privacy.mechanism in (LOCAL_DPSGD, USER_LEVEL):
            raise UserError(
                "--keep-optimizer keeps the AdamW state of plain local training; --privacy dp-sgd trains through "
                "DP-SGD's optimiser and --privacy user-level sends clipped gradients, not locally trained weights"
            )
        if self.data.partition == "per-user":
            raise UserError(
                "--keep-optimizer with --partition per-user: a client is one user, sampled a few times in a run, "
                "and every client would hold twice the model in optimiser state; use it with silos"
            )

    def _validate_lr_schedule(self) -> None:
        if self.fit.lr_schedule != "constant" and self.privacy.mechanism == USER_LEVEL:
            raise UserError(
                f"--lr-schedule {self.fit.lr_schedule} sets the clients' local learning rate; under --privacy "
                "user-level the clients send clipped gradients and the server takes the step (--server-lr)"
            )

    def for_round(self, server_round: int) -> RunConfig:
        """The configuration a client trains round ``server_round`` (1-based) with: ``--lr-schedule linear``
        scales its learning rate by (R − r + 1) / R over the run's R rounds."""
        if self.fit.lr_schedule == "constant":
            return self
        share = linear_decay(server_round - 1, self.algorithm.rounds)
        return replace(self, fit=replace(self.fit, lr=self.fit.lr * share))

    def _validate_item_weighted(self) -> None:
        if not self.algorithm.item_weighted:
            return
        clash = (
            f"--privacy {self.privacy.mechanism} (each client's item counts are not covered by the privacy accounting)"
            if self.privacy.private
            else "--secure-aggregation (the server needs each client's item counts)"
            if self.secure.secure_aggregation
            else f"--strategy {self.algorithm.strategy} (a robust rule does not average)"
            if self.algorithm.strategy in ROBUST_STRATEGIES
            else None
        )
        if clash is not None:
            raise UserError(f"--item-weighted does not combine with {clash}")

    def _ghost_safe(self) -> bool:
        # Imported here: the model class brings torch, which the CLI should not pay to build its parsers.
        from fedseqrec.models.registry import model_class

        return model_class(self.model.name).ghost_clipping_safe

    def planned_horizon(self) -> int:
        """The rounds an ``--epsilon`` target is calibrated for: recorded when the run starts, kept on resume."""
        return self.privacy.horizon if self.privacy.horizon is not None else self.algorithm.rounds

    def planned(self) -> RunConfig:
        """The run as every engine starts it (``simulate``, ``deploy``, ``flwr run``): each implication among the
        options applied here, once — ``--epsilon`` or ``--noise-multiplier`` without ``--privacy`` ask for DP-SGD;
        an ``--epsilon`` target is calibrated for ``--horizon`` rounds (default ``--rounds``; recorded, kept on
        resume); an audited run's coins are drawn (recorded, so that every client builds the same canaries); a
        counted model (``--model cooc``) is one release, one round. Planning a planned config changes nothing."""
        cfg = replace(self, privacy=self.privacy.implied(), data=self.data.with_audit_seed())
        if cfg.model.name in COUNTED_MODELS:
            cfg = replace(cfg, algorithm=replace(cfg.algorithm, rounds=1))
        if cfg.privacy.epsilon is None or cfg.privacy.horizon is not None:
            return cfg
        return replace(cfg, privacy=replace(cfg.privacy, horizon=cfg.algorithm.rounds))
