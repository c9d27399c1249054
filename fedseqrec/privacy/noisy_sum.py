"""The aggregate of federation-wide user-level DP (:mod:`fedseqrec.privacy.user_level`): the silos' sums added,
the noise added once (server mode), the total divided by the expected number of sampled users — never the actual
count, which would depend on who took part — and applied as one gradient step, on which a server optimiser
(FedAdam, …) acts as on any aggregate. With ``--item-rows`` the item rows that do not train get no noise."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg


class NoisySum(FedAvg):
    """Adds the silos' sums, adds the noise (server mode), divides by the expected number of users and returns
    ``current − that`` as the aggregate: one SGD step of rate 1, on which a server optimiser (FedAdam, …) built
    over this class acts as on any aggregate."""

    def __init__(self, keys: list[str] = (), expected_users: float = 1.0, noise_std=0.0, rows=None, **kwargs):
        super().__init__(**kwargs)  # (a server optimiser's __init__ reaches here without ours: set again after)
        self.set_noisy_sum(list(keys), expected_users, noise_std, rows)

    def set_noisy_sum(
        self,
        keys: list[str],
        expected_users: float,
        noise_std: float | Callable[[], float],
        rows: Callable[[], dict[str, np.ndarray]] | None = None,
    ) -> None:
        """``noise_std``: the server's noise, or what gives each round's (adaptive clipping changes it); ``rows``:
        what gives, per item table, the rows that train (the others get no noise), or None: every row."""
        self.keys, self.expected_users = keys, expected_users
        self.noise_std = noise_std if callable(noise_std) else (lambda: noise_std)
        self.rows = rows if rows is not None else dict
        self.sent: ArrayRecord | None = None  # the global weights of this round (not current_arrays: FedOpt's)

    def configure_train(self, server_round, arrays, config, grid):
        self.sent = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = {k: v.numpy() for k, v in self.sent.items()}
        total = {k: np.zeros_like(current[k], dtype=np.float64) for k in self.keys}
        for reply in replies:
            for record in reply.content.array_records.values():
                for key, value in record.items():
                    total[key] += value.numpy()
        rng = np.random.default_rng(secrets.randbits(64))
        noise_std, rows = self.noise_std(), self.rows()
        for key in self.keys:
            if noise_std > 0 and key in rows:  # an item table: noise on the rows that train, nothing elsewhere
                total[key][rows[key]] += rng.normal(0.0, noise_std, size=total[key][rows[key]].shape)
            elif noise_std > 0:
                total[key] += rng.normal(0.0, noise_std, size=total[key].shape)
            current[key] = (current[key] - total[key] / self.expected_users).astype(current[key].dtype)
        return ArrayRecord({k: Array(v) for k, v in current.items()}), MetricRecord()


def with_noisy_sum(strategy_class: type) -> type:
    """The run's strategy with :class:`NoisySum` as the aggregate its server optimiser starts from."""
    if strategy_class is FedAvg:
        return NoisySum

    def __init__(self, keys: list[str], expected_users: float, noise_std, rows=None, **kwargs):
        strategy_class.__init__(self, **kwargs)  # Flower's optimisers take their own options only
        self.set_noisy_sum(keys, expected_users, noise_std, rows)

    return type(f"UserLevel{strategy_class.__name__}", (strategy_class, NoisySum), {"__init__": __init__})
