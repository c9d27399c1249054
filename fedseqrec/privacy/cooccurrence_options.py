"""The options of the co-occurrence model (``--model cooc``): how pairs are counted and, with ``--cooc-epsilon``,
released under user-level DP — by ``fedseqrec train`` in one process, or by a federation's silos each adding up
their own users (importable without torch: the CLI builds its parsers from them)."""

from __future__ import annotations

from dataclasses import dataclass

from fedseqrec.errors import UserError
from fedseqrec.options import option, positive, positive_int, within
from fedseqrec.privacy.config import NO_DP

COOCCURRENCE = "co-occurrence model"
ITEMS_PER_EPSILON, FEWEST_ITEMS, MOST_DEFAULT_ITEMS = 250, 125, 2000


def default_items(epsilon: float | None) -> int:
    """The items a release at ``epsilon`` has pair counts for by default. Chosen on validation (benchmark notes):
    on Amazon Beauty the best K rose with ε (about 250 at ε = 1 to 2,000 at ε = 8); on ml-100k 500 was best at ε = 1
    and 2, where 2,000 (every item) lost more than half; at ε = 8 ml-100k prefers 400, which no rule of ε alone
    gives both datasets."""
    if epsilon is None:
        return MOST_DEFAULT_ITEMS
    return min(MOST_DEFAULT_ITEMS, max(FEWEST_ITEMS, round(ITEMS_PER_EPSILON * epsilon)))


@dataclass
class CooccurrenceConfig:
    """``--model cooc``'s counting and its release."""

    cooc_epsilon: float | None = option(
        None,
        "--model cooc: release the item choice and the pair counts with the Gaussian mechanism at this user-level ε",
        check=positive,
        group=COOCCURRENCE,
    )
    cooc_items: int | None = option(
        None,
        "--model cooc with --cooc-epsilon: the items chosen (privately) to have pair counts; the rest score "
        "popularity (default: 250 × ε, from 125 to 2,000: a small ε affords the noise on the pairs of fewer items)",
        check=positive_int,
        group=COOCCURRENCE,
    )
    cooc_item_noise: float = option(
        10.0,
        "--model cooc with --cooc-epsilon: the item counts' noise multiplier × ε (smaller: better chosen items and "
        "popularity prior, more noise on the pairs)",
        check=positive,
        group=COOCCURRENCE,
    )
    cooc_window: int = option(
        5,
        "--model cooc: two items count as a pair when at most this many events apart",
        check=positive_int,
        group=COOCCURRENCE,
    )
    cooc_public_users: float = option(
        0.0,
        "--model cooc with --cooc-epsilon: share of users declared public (opted in, not covered): their pairs are "
        "counted exactly and choose the pairs released for the others (--cooc-items and --cooc-item-noise unused)",
        check=within(0, 1, high_open=True),
        group=COOCCURRENCE,
    )

    def items(self) -> int:
        """--cooc-items, or its default for --cooc-epsilon: 250 × ε items, at least 125 and at most 2,000."""
        if self.cooc_items is not None:
            return self.cooc_items
        return default_items(self.cooc_epsilon)

    def check(self) -> None:
        """What the options cannot be together."""
        if self.cooc_public_users > 0 and self.cooc_epsilon is None:
            raise UserError("--cooc-public-users: without --cooc-epsilon nothing is private; drop it or give an ε")

    def check_federation(
        self, mechanism: str, secure: bool, evaluation: str, clients_per_round: int | None, audited: bool
    ) -> None:
        """A federation's other options, refused where they would change a release counted by its silos (the
        options of training rounds do not apply)."""
        self.check()
        clash = (
            f"--privacy {mechanism} (its privacy is --cooc-epsilon: one release over every silo's users)"
            if mechanism != NO_DP
            else "--secure-aggregation without --cooc-epsilon (the plain count sends each silo's pairs as a list, "
            "which SecAgg+ cannot add up; and it has no privacy to protect)"
            if secure and self.cooc_epsilon is None
            else f"--evaluation {evaluation} (the release is evaluated by the server: centralized)"
            if evaluation != "centralized"
            else "--clients-per-round (every silo's users are counted)"
            if clients_per_round is not None
            else "--audit-canaries or --audit-users (the canary audit trains a model; the release is counted)"
            if audited
            else None
        )
        if clash is not None:
            raise UserError(f"--model cooc does not combine with {clash}")
