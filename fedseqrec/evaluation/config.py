"""When and how a model is evaluated, for centralized and federated training alike."""

from __future__ import annotations

from dataclasses import dataclass

from fedseqrec.evaluation.protocols import PROTOCOLS
from fedseqrec.options import option, positive_int

EVALUATION = "evaluation"

SELECTION_METRIC = "NDCG@10"  # what picks the best epoch or round (ranking tasks)


def selection_metric(task: str) -> str:
    """What picks the best epoch or round: NDCG@10 for ranking, the click AUC for ads (``--task ctr``)."""
    return "AUC" if task == "ctr" else SELECTION_METRIC


def headline(metrics: dict) -> str:
    """The figures a command prints for a result: ranking or click and conversion."""
    if "AUC" in metrics:
        names = ("CTR-AUC", "CTR-GAUC", "CTR-LogLoss", "CVR-AUC", "CVR-calibration")
    else:
        names = ("NDCG@10", "HR@10", "MRR@10")
    return "  ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)


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
