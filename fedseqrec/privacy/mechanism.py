"""The server side of a privacy mechanism: one object per run, behind one interface, so the round loop has no
mechanism-specific branches.

A mechanism
- plans a round: which clients take part (:meth:`PrivacyMechanism.choose`), or that no round may run any more
  (it raises :class:`BudgetExhausted`);
- may prepare the initial global model (:meth:`PrivacyMechanism.prepare_model`: training on public users) and make
  one accounted release before the first round (:meth:`PrivacyMechanism.prepare_release`: the item rows that train);
- may bring its own aggregation (:meth:`PrivacyMechanism.strategy`: DP-FedAvg wraps FedAvg in Flower's DP wrapper);
- checks what comes back (:meth:`PrivacyMechanism.observe`: ledgers, re-checked ε, declined clients);
- post-processes the aggregate when nobody sent an update (:meth:`PrivacyMechanism.release_without_updates`);
- contributes to the run folder and the report (:meth:`PrivacyMechanism.state`, :meth:`PrivacyMechanism.summary`).

This is the server half of a mechanism; :mod:`fedseqrec.federated.mechanisms` pairs each with its client half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedseqrec.privacy.config import NO_DP, PrivacyConfig


class BudgetExhausted(Exception):
    """Too few clients have privacy budget left for another round: the run ends cleanly."""


@dataclass(frozen=True)
class RunFacts:
    """What a mechanism needs to know of the run besides its privacy options."""

    clients_per_round: int | None
    min_clients: int
    partition: str | None
    warn: Callable[[str], None]
    users: int = 0  # users of the whole federation (0: unknown to the server)
    horizon: int = 1  # rounds an --epsilon target is calibrated for
    trainable: tuple[str, ...] = ()  # the global model's trainable parameters
    item_tables: tuple[str, ...] = ()  # its parameters whose row i belongs to item i (embedding, scorer)
    seed: int = 0  # the run seed (what the public users are drawn from)
    secure: bool = False  # the server sees only the sum of the round's replies (SecAgg+)
    secure_rounding: float = 0.0  # what SecAgg+'s quantisation can add to a sum's ℓ2 sensitivity (quantised_sum)
    selection: str = "NDCG@10"  # the task's validation metric (what picks the public users' best epoch)
    batch_size: int = 1  # a client's local training: what a DP-SGD round's plan follows from
    local_epochs: int = 1
    local_steps: int | None = None


class PrivacyMechanism:
    name = NO_DP

    def __init__(self, privacy: PrivacyConfig, run: RunFacts):
        self.privacy, self.run = privacy, run

    def start(self, n_clients: int, saved: str | None, last_round: int) -> None:
        """Called once the clients are known; ``saved``: what :meth:`state` returned at ``last_round`` (resume)."""

    def prepare_model(self, model, sequences, split, fit, seed: int, protocol: str = "full") -> str | None:
        """Change the initial global model before the first round (not on resume); what was done, for the log."""
        return None

    def prepare_release(self, sequences, split, saved: str | None = None) -> str | None:
        """Make the mechanism's release before the first round from the server's data, or take it from ``saved``
        (what :meth:`state` returned when it was made; not on resume: :meth:`start` restores it); its cost is in the
        ledger. What was done, for the log."""
        return None

    def strategy(self, common: dict):
        """A strategy of the mechanism's own (built with Flower's ``common`` options), or None for the run's."""
        return None

    def aggregate_class(self, strategy_class: type) -> type:
        """The class the run's strategy is built from (a mechanism may put its own aggregate beneath it)."""
        return strategy_class

    def aggregate_options(self) -> dict:
        """Constructor options :meth:`aggregate_class` needs."""
        return {}

    def message_config(self) -> dict:
        """What every train message carries for the mechanism besides the run config."""
        return {}

    def client_config(self, client: int) -> dict:
        """What the train message to ``client`` carries for the mechanism besides :meth:`message_config`."""
        return {}

    def reply_arrays(self, keys: list[str]) -> tuple[list[str], bool]:
        """The arrays a training reply carries (of the global model's ``keys``), and whether they are weights (else
        an update itself): what the server checks each reply against."""
        return keys, True

    def to_aggregate(self, replies: list) -> list:
        """The replies the round aggregates: by default those with training examples."""
        return [r for r in replies if r.content["metrics"]["num-examples"] > 0]

    def choose(self, available: list[int], server_round: int, sample: Callable[[list[int]], list[int]]) -> list[int]:
        """The round's clients; ``sample`` is the run's reproducible sampler."""
        return sample(available)

    def reply_problem(self, server_round: int, metrics) -> str | None:
        """Why the mechanism's fields of a reply's metrics cannot be read (None: they can); checked before
        :meth:`observe` sees the reply, so no reply can end the run."""
        return None

    def account_refused(self, server_round: int, client: int, reply, reason: str) -> None:
        """A reply refused before :meth:`observe` (its figures did not hold): what its client released is still
        accounted, from the server's own plan."""

    def observe(self, server_round: int, replies: list) -> dict:
        """Check the replies; returns what the round's log line keeps (``declined``: clients out of budget)."""
        return {}

    def min_updates(self, chosen: int) -> int:
        """Fewer updates than this fail the round."""
        return self.run.min_clients

    def too_few_updates(self, server_round: int, declined: list[str], updates: int) -> None:
        """Raise :class:`BudgetExhausted` if the round failed because clients are out of budget."""

    def check_resume(self, saved: str | None) -> None:
        """Refuse (UserError) to resume a run whose budget cannot pay for another round."""

    def release_without_updates(self, strategy, arrays):
        """The global weights after a round that brought no update (None: unchanged)."""
        return None

    def state(self) -> str | None:
        """The mechanism's record, saved in the run folder (``privacy.json``) and in the resume state."""
        return None

    def summary(self) -> dict | None:
        """The privacy block of ``metrics.json``."""
        return None

    @property
    def private(self) -> bool:
        return self.name != NO_DP
