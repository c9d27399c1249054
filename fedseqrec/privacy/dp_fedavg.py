"""User-level central DP for one-user-per-client federations: DP-FedAvg (McMahan et al., 2018) with Flower's
``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`` wrappers, and our own accountant over rounds.

Exactly what is released, and so what is accounted:

- clients are sampled by **Poisson sampling**: every client independently with rate ``q = clients-per-round / N``
  each round (not Flower's fixed-size sample), from OS randomness (a sample predictable from --seed would void
  the amplification by sampling);
- each sampled client's update is clipped to norm C (by the server, or by the client's ``fixedclipping_mod`` /
  ``adaptiveclipping_mod``), the clipped updates are **summed and divided by the expected number of clients
  m = qN** (a fixed denominator, so one user changes the sum by at most C), and Flower's wrapper adds Gaussian
  noise of standard deviation z·C/m; a round in which nobody was sampled still releases the noise;
- with adaptive clipping (Andrew et al., 2021) the clipped fraction is also released with noise σ_b and divided
  by m; Flower turns the effective noise multiplier z into the update noise (z⁻² − (2σ_b)⁻²)^(-1/2), so the round
  is one Poisson-subsampled Gaussian mechanism with multiplier z.

Each round is therefore one step of the Poisson-subsampled Gaussian mechanism (z, q): the accountant (Opacus RDP or
PRV) composes ``rounds`` of them. Every user holds one client, so the guarantee is user-level.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from fedseqrec.jsonio import dumps
from fedseqrec.privacy.accounting import epsilon
from fedseqrec.privacy.config import DP_FEDAVG, default_delta
from fedseqrec.privacy.mechanism import BudgetExhausted, PrivacyMechanism


class FixedDenominatorFedAvg(FedAvg):
    """FedAvg that adds the (clipped) updates and divides by the expected number of clients, not the actual one."""

    def __init__(self, expected_clients: float, **kwargs):
        super().__init__(**kwargs)
        self.expected_clients = expected_clients
        self.current_arrays: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        current = {k: v.numpy() for k, v in self.current_arrays.items()}
        total = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
        for reply in valid:
            for record in reply.content.array_records.values():
                for key, value in record.items():
                    total[key] += value.numpy() - current[key]
        new = {k: (current[k] + total[k] / self.expected_clients).astype(current[k].dtype) for k in current}
        return ArrayRecord({k: Array(v) for k, v in new.items()}), MetricRecord()


class _ExpectedCountMixin:
    """Adaptive clipping: the noisy clipped count is divided by the expected number of clients, as analysed."""

    def _noisy_fraction(self, count: int, total: int) -> float:
        return float(np.random.normal(count, self.clipped_count_stddev)) / float(self.num_sampled_clients)


class ServerSideAdaptive(_ExpectedCountMixin, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientSideAdaptive(_ExpectedCountMixin, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


def central_dp_strategy(
    kind: str,
    side: str,
    inner: FedAvg,
    noise: float,
    clipping_norm: float,
    expected: float,
    target_quantile: float,
    clip_lr: float,
):
    if kind == "fixed":
        wrapper = (
            DifferentialPrivacyServerSideFixedClipping
            if side == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )
        return wrapper(inner, noise_multiplier=noise, clipping_norm=clipping_norm, num_sampled_clients=expected)
    wrapper = ServerSideAdaptive if side == "server" else ClientSideAdaptive
    return wrapper(
        inner,
        noise_multiplier=noise,
        num_sampled_clients=expected,
        initial_clipping_norm=clipping_norm,
        target_clipped_quantile=target_quantile,
        clip_norm_lr=clip_lr,
    )


def poisson_clients(available: list[int], rate: float, rng: np.random.Generator | None = None) -> list[int]:
    """Each client independently with probability ``rate``. The privacy amplification by sampling holds only if
    nobody can predict the sample: by default the generator is seeded from the OS, never from --seed."""
    rng = rng if rng is not None else np.random.default_rng()
    available = sorted(available)
    return [c for c, u in zip(available, rng.random(len(available)), strict=True) if u < rate]


class CentralAccountant:
    """One Poisson-subsampled Gaussian release per round, composed after the ``prior`` records (a release made once
    before the first round: the private item selection)."""

    def __init__(self, noise: float, rate: float, delta: float, accountant: str, prior: tuple[dict, ...] = ()):
        self.noise, self.rate, self.delta, self.accountant = noise, rate, delta, accountant
        self.prior = tuple(prior)
        self.rounds = 0

    def add_round(self) -> float:
        self.rounds += 1
        return self.epsilon()

    def epsilon(self, rounds: int | None = None) -> float:
        return epsilon([_as_record(r) for r in self.records(rounds)], self.delta, self.accountant)

    def records(self, rounds: int | None = None) -> list[dict]:
        """The ledger: the prior releases, then the rounds' (as one record of ``rounds`` steps)."""
        n = self.rounds if rounds is None else rounds
        rounds_record = {"round": n, "noise_multiplier": self.noise, "sample_rate": self.rate, "steps": n, "rounds": n}
        return [*self.prior, rounds_record] if n else list(self.prior)


def _as_record(record: dict) -> tuple[float, float, int]:
    return record["noise_multiplier"], record["sample_rate"], record["steps"]


class OneReleasePerRound(PrivacyMechanism):
    """A mechanism that releases one Poisson-subsampled Gaussian aggregate per round, covering every user: one ε for
    all, the budget checked before each round, the record in the layout of the per-client reports."""

    accountant: CentralAccountant

    def __init__(self, privacy, run):
        super().__init__(privacy, run)
        self.history: list[dict] = []

    def restore(self, saved: str | None, last_round: int) -> None:
        if saved:
            self.history = [h for h in json.loads(saved)["history"] if h["round"] <= last_round]
        self.accountant.rounds = len(self.history)

    def check_budget(self) -> None:
        budget, accountant = self.privacy.budget, self.accountant
        if budget is not None and accountant.epsilon(accountant.rounds + 1) > budget:
            raise BudgetExhausted(
                f"privacy budget exhausted: another round would take ε above the budget {budget:g} "
                f"(now {accountant.epsilon():.3f})"
            )

    def observe(self, server_round: int, replies: list) -> dict:
        eps = self.accountant.add_round()
        self.history.append({"round": server_round, "max_epsilon": eps, "epsilons": {}})
        return {"epsilon_max": eps, "declined": []}

    def max_epsilon(self) -> float:
        return self.accountant.epsilon()

    def summary(self) -> dict:
        return {"max_epsilon": self.max_epsilon(), "accountant": self.privacy.accountant, "mechanism": self.name}

    def entry(self) -> dict:
        """Every client's (every user's) record: the same ε for all."""
        a = self.accountant
        eps = a.epsilon()
        return {
            "epsilon": eps,
            "epsilon_checked": eps,
            "delta": a.delta,
            "budget": self.privacy.budget,
            "accountant": a.accountant,
            "status": "active",
            "ledger": a.records(),
        }


class DPFedAvg(OneReleasePerRound):
    """DP-FedAvg on the server: Poisson client sampling, Flower's DP wrapper around a fixed-denominator FedAvg,
    and one Poisson-subsampled Gaussian release per round, composed: one ε for every client (each round is one
    release that covers every user)."""

    name = DP_FEDAVG
    mechanism = (
        "DP-FedAvg (central DP): Poisson client sampling, each update clipped to the clipping norm, the sum divided "
        "by the expected number of clients, Gaussian noise added by the server (Flower's DP strategy wrapper); one "
        "Poisson-subsampled Gaussian release per round, composed over the rounds"
    )

    def __init__(self, privacy, run):
        super().__init__(privacy, run)
        self.clients: list[int] = []
        self.accountant: CentralAccountant | None = None  # once the number of clients is known
        unit = "user-level" if run.partition == "per-user" else "client-level (all the data of one client)"
        self.privacy_unit = f"{unit}: adding or removing one client's whole update, each client sampled with rate q"

    def start(self, n_clients: int, saved: str | None, last_round: int) -> None:
        self.clients = list(range(n_clients))
        p = self.privacy
        delta = p.delta if p.delta is not None else default_delta(n_clients)
        self.accountant = CentralAccountant(
            p.central_noise, self.run.clients_per_round / n_clients, delta, p.accountant
        )
        self.restore(saved, last_round)

    def strategy(self, common: dict):
        p = self.privacy
        inner = FixedDenominatorFedAvg(expected_clients=self.run.clients_per_round, **common)
        return central_dp_strategy(
            p.central_norm,
            p.central_clipping,
            inner,
            noise=p.central_noise,
            clipping_norm=p.clipping_norm,
            expected=self.run.clients_per_round,
            target_quantile=p.target_quantile,
            clip_lr=p.clip_lr,
        )

    def choose(self, available: list[int], server_round: int, sample) -> list[int]:
        self.check_budget()
        return poisson_clients(available, self.accountant.rate)

    def min_updates(self, chosen: int) -> int:
        return min(self.run.min_clients, chosen)  # Poisson sampling may choose fewer than --min-clients

    def release_without_updates(self, strategy, arrays: ArrayRecord) -> ArrayRecord:
        """A round that sampled nobody (or nobody with data) still releases the noise, as the accounting assumes."""
        return strategy._add_noise_to_aggregated_arrays(arrays)

    def state(self) -> str:
        a = self.accountant
        entry = self.entry()
        return dumps(  # (a non-finite figure is written as null)
            {
                "mechanism": self.mechanism,
                "privacy_unit": self.privacy_unit,
                "sampling": f"Poisson, rate q = {a.rate:.6g} per client and round (expected clients a round / clients)",
                "clients": {str(c): entry for c in self.clients},
                "history": self.history,
            }
        )
