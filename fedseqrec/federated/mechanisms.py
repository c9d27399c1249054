"""A privacy mechanism is one registered object with its two halves, as Flower pairs each DP strategy wrapper with
the client mod it needs:

- the **server half** (a :class:`fedseqrec.privacy.mechanism.PrivacyMechanism`): plans and checks each round,
  shapes the aggregation, keeps the ledger, reports ε;
- the **client half**: what a client does in a training round (a function of
  :mod:`fedseqrec.federated.client_rounds`), and the ClientApp mods it needs.

``--privacy NAME`` picks one entry of :data:`MECHANISMS`; a new mechanism is one entry here, its server class and
its client round, and nothing else changes (the ClientApp and the round loop have no mechanism branch).

Halves are named, not imported, here: a deployed ClientApp starts a process per message and imports only the half
of the mechanism its run uses (DP-SGD brings Opacus, a second of start-up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from fedseqrec.privacy.config import DP_FEDAVG, LOCAL_DPSGD, NO_DP, USER_LEVEL, PrivacyConfig
from fedseqrec.privacy.mechanism import PrivacyMechanism, RunFacts


def _load(reference: str):
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Mechanism:
    """One privacy mechanism: its server half, its client half, and the mods the client half needs."""

    name: str
    server: str  # "module:Class" of the server half
    client: str  # "module:function" of the client half (see client_rounds.ClientRound)
    mods: tuple[str, ...] = ()  # "module:function" of each ClientApp mod it needs (they act on its messages only)

    def server_half(self, privacy: PrivacyConfig, run: RunFacts) -> PrivacyMechanism:
        return _load(self.server)(privacy, run)

    def client_half(self) -> Callable:
        return _load(self.client)


ROUNDS = "fedseqrec.federated.client_rounds"
MECHANISMS = {
    m.name: m
    for m in (
        Mechanism(NO_DP, "fedseqrec.privacy.mechanism:PrivacyMechanism", f"{ROUNDS}:local_training"),
        Mechanism(LOCAL_DPSGD, "fedseqrec.privacy.local_dpsgd:LocalDPSGD", f"{ROUNDS}:dp_sgd_training"),
        # DP-FedAvg's clients train as usual; with --central-clipping client, Flower's clipping mod clips the update.
        Mechanism(
            DP_FEDAVG,
            "fedseqrec.privacy.dp_fedavg:DPFedAvg",
            f"{ROUNDS}:local_training",
            mods=("fedseqrec.privacy.clipping_mod:central_clipping_mod",),
        ),
        Mechanism(USER_LEVEL, "fedseqrec.privacy.user_level:UserLevelDPFedSGD", f"{ROUNDS}:user_level_contribution"),
    )
}


def mechanism_of(privacy: PrivacyConfig) -> Mechanism:
    return MECHANISMS[privacy.mechanism]


def make_mechanism(privacy: PrivacyConfig, run: RunFacts) -> PrivacyMechanism:
    """The server half of the run's mechanism."""
    return mechanism_of(privacy).server_half(privacy, run)


def client_mods() -> list[Callable]:
    """Every mechanism's ClientApp mods (each acts only on the messages of a run that uses its mechanism)."""
    return [_load(mod) for mechanism in MECHANISMS.values() for mod in mechanism.mods]
