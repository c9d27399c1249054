"""The options of centralized training (importable without torch: the CLI builds its parser from them)."""

from __future__ import annotations

from dataclasses import dataclass

from fedseqrec.evaluation.config import EvaluationConfig
from fedseqrec.models.config import FitConfig
from fedseqrec.options import non_negative_int, option, positive, positive_int, redefault, section, within

TRAINING = "training"
PRIVATE_POP = "private popularity baseline"
COOCCURRENCE = "co-occurrence model"


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
    cooc_epsilon: float | None = option(
        None,
        "--model cooc: release the item choice and the pair counts with the Gaussian mechanism at this user-level ε",
        check=positive,
        group=COOCCURRENCE,
    )
    cooc_items: int = option(
        2000,
        "--model cooc with --cooc-epsilon: the items chosen (privately) to have pair counts; the rest score popularity",
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
    evaluation: EvaluationConfig = section(EvaluationConfig)
