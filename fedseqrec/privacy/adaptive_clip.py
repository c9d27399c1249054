"""Adaptive clipping with a private quantile (Andrew, Thakkar, McMahan and Ramaswamy, 2021).

Instead of a fixed C, the server steers C each round towards the norm below which a share γ of the users'
contributions fall: every sampled user adds ([norm ≤ C] − ½) to a count, the count gets Gaussian noise of
standard deviation σ_b, and with b = noisy count / expected users + ½ the next norm is C · exp(−η (b − γ)).

The count is a second release about the same users. One user moves it by at most ½ (centred, and the server
divides by the expected, not the actual, number of users), so the pair (sum with noise σ_Δ·C, count with noise σ_b)
is one Gaussian mechanism of multiplier σ = (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2) (the paper's Theorem 1): the accountant
charges σ, and the sum's own noise is σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), slightly above σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedseqrec.errors import UserError

COUNT_NOISE_SHARE = 1 / 20  # σ_b as a share of the expected users a round: the paper's choice


def sum_noise_multiplier(sigma: float, count_noise: float) -> float:
    """σ_Δ: the noise multiplier of the sum that, with the count's noise ``count_noise``, makes the pair cost σ."""
    if sigma >= 2 * count_noise:
        raise UserError(
            f"adaptive clipping needs a noise multiplier below twice the count's noise ({2 * count_noise:g} = "
            f"expected users a round / 10); σ = {sigma:.3g}: sample more users a round or use a fixed norm"
        )
    return (sigma**-2 - (2 * count_noise) ** -2) ** -0.5


@dataclass
class QuantileClip:
    clip: float  # the norm of the coming round
    quantile: float  # γ: the share of users that should not be clipped
    lr: float  # η: the geometric step
    expected_users: float

    @property
    def count_noise(self) -> float:
        return COUNT_NOISE_SHARE * self.expected_users

    def update(self, noisy_count: float) -> float:
        """The next norm from the round's noisy centred count of unclipped users; returns the estimated share."""
        share = noisy_count / self.expected_users + 0.5
        self.clip *= math.exp(-self.lr * (share - self.quantile))
        return share
