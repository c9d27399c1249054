"""A client's DP-SGD round before it runs: the settings it follows and its ledger record.

The client plans its round with :func:`plan_round` and the server plans the same round for the same client from
what it sent, so the two agree exactly; nothing here needs torch (the server checks replies without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedseqrec.privacy.accounting import calibrate_noise
from fedseqrec.privacy.config import PrivacyConfig
from fedseqrec.privacy.ledger import LedgerRecord


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float | None  # None: calibrated from target_epsilon
    target_epsilon: float | None
    max_grad_norm: float
    delta: float
    accountant: str
    grad_sample_mode: str
    planned_rounds: int  # the whole run: the target ε is for every round a client could take part in

    @classmethod
    def of(cls, privacy: PrivacyConfig, delta: float, planned_rounds: int) -> DPSettings:
        p = privacy
        return cls(
            p.noise_multiplier, p.epsilon, p.max_grad_norm, delta, p.accountant, p.grad_sample_mode, planned_rounds
        )


def plan_round(
    examples: int, batch_size: int, local_epochs: int, local_steps: int | None, dp: DPSettings, server_round: int
) -> LedgerRecord:
    """The round's mechanism before it runs (used for the budget check and, unchanged, for the ledger)."""
    batches = max(1, math.ceil(examples / batch_size))
    sample_rate = 1.0 / batches  # Opacus' Poisson loader: each of len(loader) batches samples every user with q
    steps = local_steps if local_steps is not None else local_epochs * batches
    sigma = dp.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise(dp.target_epsilon, dp.delta, sample_rate, dp.planned_rounds * steps, dp.accountant)
    return LedgerRecord(round=server_round, noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
