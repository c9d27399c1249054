"""The options of centralized training (importable without torch: the CLI builds its parser from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedseqrec.errors import UserError
from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.models.config import FitConfig
from fedseqrec.options import non_negative_int, option, positive, positive_int, redefault, section
from fedseqrec.privacy.cooccurrence_options import CooccurrenceConfig

TRAINING = "training"
PRIVATE_POP = "private popularity baseline"
AUTO = "auto"


def prior_beta(value: str) -> float | None:
    """β of ``--popularity-prior`` (None: ``auto``); a UserError for anything else."""
    if value == AUTO:
        return None
    try:
        beta = float(value)
    except ValueError:
        beta = math.nan
    if not math.isfinite(beta):
        raise UserError(f"--popularity-prior {value}: expected a number (β) or {AUTO}")
    return beta


def _prior_problem(value) -> str | None:
    try:
        prior_beta(str(value))
    except UserError as err:
        return str(err).split(": ", 1)[1]
    return None


@dataclass
class TrainConfig(FitConfig):
    """Centralized training: larger batches than a client's, early stopping on validation NDCG@10."""

    batch_size: int = redefault(FitConfig, "batch_size", 128)
    threads: int = redefault(FitConfig, "threads", 0)
    epochs: int = option(200, "most epochs to train", check=positive_int, group=TRAINING)
    patience: int = option(
        25,
        "stop after this many evaluations without a better validation NDCG@10",
        check=positive_int,
        group=TRAINING,
    )
    max_seconds: float | None = option(None, "stop after this much training time", check=positive, group=TRAINING)
    warmup_steps: int = option(
        0,
        "raise the learning rate linearly from 0 over this many first steps (post-LN Transformers: bert4rec)",
        check=non_negative_int,
        group=TRAINING,
    )
    popularity_prior: str = option(
        "0",
        "after training add β · log(1 + an item's training count) to its score (into the scorer's bias): a number "
        f"β, or {AUTO} (β from 0 to 1 chosen on validation); 0: the model as trained",
        check=_prior_problem,
        metavar="BETA|auto",
        group=TRAINING,
    )
    pop_epsilon: float | None = option(
        None,
        "--model pop: release the counts with the Gaussian mechanism at this user-level ε",
        check=positive,
        group=PRIVATE_POP,
    )
    pop_items: int = option(
        20,
        "--model pop with --pop-epsilon: items a user counts for at most (the ℓ2 sensitivity is its root)",
        check=positive_int,
        group=PRIVATE_POP,
    )
    cooccurrence: CooccurrenceConfig = section(CooccurrenceConfig)
    evaluation: EvaluationConfig = section(EvaluationConfig)
