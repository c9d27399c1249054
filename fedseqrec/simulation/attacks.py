"""Malicious clients, in the simulation only: what the robust strategies and the reply checks are measured against.

A share of the clients, drawn with the run seed, replace their honest update Δ (their trained weights minus the
global weights they were sent; under user-level DP, their gradient sum) by:

- ``scale``: ``--attack-scale`` × Δ (a boosted update: model replacement),
- ``sign-flip``: −``--attack-scale`` × Δ (the update pointing the other way),
- ``nan``: Δ with one NaN (a broken client).

It is a Flower client mod around the honest ClientApp, so clients, strategies and privacy mechanisms run as in a
real federation; only the reply of an attacker changes on its way back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from fedseqrec.errors import UserError
from fedseqrec.options import check, non_negative, option, within

ATTACKS = ("none", "scale", "sign-flip", "nan")
ATTACK = "attack (simulation only)"


@dataclass
class AttackConfig:
    attack: str = option("none", "what malicious clients send instead of their update", choices=ATTACKS, group=ATTACK)
    attack_fraction: float = option(
        0.2, "share of the clients that are malicious (drawn with --seed)", check=within(0, 1), group=ATTACK
    )
    attack_scale: float = option(100.0, "scale / sign-flip: the factor on the update", check=non_negative, group=ATTACK)

    def malicious(self, clients: int, seed: int) -> list[int]:
        """The malicious clients' partition ids: ``round(attack_fraction × clients)`` of them, drawn by ``seed``."""
        check(self)
        if self.attack == "none":
            return []
        count = round(self.attack_fraction * clients)
        if count == 0:
            raise UserError(f"--attack-fraction {self.attack_fraction:g} of {clients} clients is no client")
        rng = np.random.default_rng([seed, 0xA77AC])
        return sorted(int(c) for c in rng.choice(clients, size=count, replace=False))


def attacked(update: np.ndarray, attack: str, scale: float) -> np.ndarray:
    if attack == "scale":
        return update * scale
    if attack == "sign-flip":
        return -update * scale
    out = update.copy()
    out.flat[0] = np.nan
    return out


def attack_mod(cfg: AttackConfig, malicious: list[int], partition_of):
    """A client mod: the honest reply of a malicious client, its update replaced. ``partition_of(context, config)``
    names the client a message is for (the ClientApp's own rule)."""
    bad = set(malicious)

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error() or not reply.content.array_records:
            return reply
        if partition_of(context, msg.content["config"])[0] not in bad:
            return reply
        sent = msg.content["arrays"]
        arrays = reply.content["arrays"]
        weights = list(arrays.keys()) == list(sent.keys())  # else an update itself (user-level DP's sum)
        changed = {}
        for key in arrays:
            value = arrays[key].numpy()
            if value.dtype.kind != "f":
                changed[key] = Array(value)
                continue
            base = sent[key].numpy().astype(np.float64) if weights else 0.0
            update = attacked(value.astype(np.float64) - base, cfg.attack, cfg.attack_scale)
            changed[key] = Array(np.asarray(base + update, dtype=value.dtype))
        reply.content["arrays"] = ArrayRecord(changed)
        return reply

    return mod
