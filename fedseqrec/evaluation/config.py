"""When and how a model is evaluated, for centralized and federated training alike."""

from __future__ import annotations

from dataclasses import dataclass

from fedseqrec.evaluation.protocols import PROTOCOLS
from fedseqrec.options import option, positive_int

EVALUATION = "evaluation"


@dataclass
class EvaluationConfig:
    eval_every: int = option(
        1, "validate every N epochs (train) or rounds (simulate, deploy)", check=positive_int, group=EVALUATION
    )
    protocol: str = option(
        "full",
        "ranking protocol: full ranking (RecBole's), full ranking without the user's earlier items (the S3-Rec / "
        "ICLRec / BSARec papers'), or 100 sampled negatives; results are labelled with it",
        choices=PROTOCOLS,
        group=EVALUATION,
    )
