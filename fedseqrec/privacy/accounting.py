"""ε from a list of DP-SGD records, and the noise that meets a target ε: Opacus' accountants behind one function.

A record is ``(noise_multiplier, sample_rate, steps)``: ``steps`` compositions of the Poisson-subsampled Gaussian
mechanism. Records of different rounds compose (RDP adds per order; PRV convolves the privacy loss distributions).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable

from fedseqrec.errors import UserError
from fedseqrec.privacy.config import ACCOUNTANTS

Record = tuple[float, float, int]


def _accountant(name: str, history: list[Record]):
    """Opacus' accountant ``name`` holding ``history``, through its public API (its registry and state dict)."""
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise UserError(f"unknown accountant {name!r}; expected one of {', '.join(ACCOUNTANTS)}")
    accountant = create_accountant(name)
    accountant.load_state_dict({"history": history, "mechanism": accountant.mechanism()})
    return accountant


def epsilon(records: Iterable[Record], delta: float, accountant: str = "rdp") -> float:
    """The composed ε of ``records`` at ``delta`` (0 for no records)."""
    history = []
    for s, q, n in records:
        if n <= 0:
            continue
        if history and history[-1][:2] == (float(s), float(q)):  # same mechanism: one self-composition (exact)
            history[-1] = (history[-1][0], history[-1][1], history[-1][2] + int(n))
        else:
            history.append((float(s), float(q), int(n)))
    if not history:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(tuple(history), delta)
    acc = _accountant(accountant, history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(acc.get_epsilon(delta=delta))
        except (ValueError, RuntimeError, OverflowError):
            return math.inf  # the PRV domain overflows for tiny noise: as good as no privacy


@functools.lru_cache(maxsize=256)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest noise multiplier (to 0.01 in ε) whose ε over ``steps`` steps stays below the target.

    A pure function, cached per process: the bisection takes seconds for large sample rates."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                )
            )
        except ValueError as err:
            raise UserError(f"no noise multiplier reaches ε = {target_epsilon} at δ = {delta}: {err}") from err


@functools.lru_cache(maxsize=64)
def calibrate_noise_after(
    prior: tuple[Record, ...], target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest noise multiplier (to 0.01 in ε) whose ``steps`` steps, composed after the ``prior`` releases
    (a one-off release before the rounds, such as the private item selection), keep ε below the target."""
    if not prior:
        return calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant)
    spent = epsilon(prior, delta, accountant)
    if spent >= target_epsilon:
        raise UserError(
            f"the release before the rounds alone spends ε = {spent:.3g} at δ = {delta:.3g}, not below the target "
            f"--epsilon {target_epsilon:g}: give it more noise"
        )

    def total(noise: float) -> float:
        return epsilon([*prior, (noise, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    while total(high) > target_epsilon:
        low, high = high, high * 2
    while total(high) < target_epsilon - 0.01 and high - low > 1e-6:
        middle = (low + high) / 2
        low, high = (low, middle) if total(middle) <= target_epsilon else (middle, high)
    return high


@functools.lru_cache(maxsize=1024)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    return tuple(
        privacy_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        )
    )


def _rdp_epsilon(history: tuple[Record, ...], delta: float) -> float:
    """Opacus' RDPAccountant.get_epsilon, with the per-step RDP of each (σ, q) computed once per process: the RDP
    of n steps is n times that of one, and the fractional orders make it slow for large sample rates."""
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as privacy_analysis

    rdp = sum(np.asarray(_rdp_of_one_step(s, q)) * n for s, q, n in history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = privacy_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)
