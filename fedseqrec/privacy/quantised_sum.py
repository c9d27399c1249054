"""What secure aggregation's quantisation does to the sensitivity of a sum the server then releases with Gaussian
noise (``--secure-aggregation`` with server-side noise: user-level DP's ``--noise-shares server``, the
co-occurrence release).

SecAgg+ adds up integers: each silo's vector is clipped to [-R, R] value by value and stochastically rounded to
``levels`` levels over that range (a step of 2R / levels), and the server dequantises the exact integer sum. Adding
or removing one user changes their silo's vector by at most Δ in ℓ2. Clipping each value to [-R, R] moves no two
vectors further apart. The rounding of a value that does not change is the same draw in both worlds (the same
uniform decides it); a value that changes is rounded differently by less than one step. So the two quantised sums
are at most Δ + √d · 2R / levels apart, d the number of values that can change, and the Gaussian noise is scaled
to that sensitivity: the accounted noise multiplier, and so ε, stay exact. With the release's levels (as many as
the silos' sum allows) the extra term is small: 1 % on Beauty's 2.0 M pairs.

This holds when the server adds the noise after the sum. Noise shares added by the silos *before* the rounding
(``--noise-shares clients``) are not covered by this argument: the rounding then acts on noisy values, and the
report says that its effect is not accounted.
"""

from __future__ import annotations

import math

WHY = (
    "secure aggregation rounds each silo's values to a grid of step 2R/levels (R: --secagg-clipping-range); a user "
    "changes their silo's vector by at most Δ, and the rounding of each value that changes by less than one step, "
    "so the noise is scaled to Δ + √d·step (d: the values summed)"
)


def rounding_bound(dimension: int, clipping_range: float, levels: int) -> float:
    """The most, in ℓ2, by which quantisation can move two neighbouring sums of ``dimension`` values further
    apart: one step ``2 · clipping_range / levels`` per value."""
    return math.sqrt(dimension) * 2.0 * clipping_range / levels


def quantised_sensitivity(sensitivity: float, dimension: int, clipping_range: float, levels: int) -> float:
    """The ℓ2 sensitivity of a sum of ``dimension`` values that SecAgg+ quantised, one user moving it by at most
    ``sensitivity`` before."""
    return sensitivity + rounding_bound(dimension, clipping_range, levels)
