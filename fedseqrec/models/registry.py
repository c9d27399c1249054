"""Models by name."""

from __future__ import annotations

from fedseqrec.errors import UserError
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.bert4rec import BERT4Rec
from fedseqrec.models.config import MODEL_NAMES, ModelConfig
from fedseqrec.models.rnn import GRU4Rec, LSTMRec
from fedseqrec.models.sasrec import SASRec

MODELS: dict[str, type[SequentialRecommender]] = {m.name: m for m in (GRU4Rec, LSTMRec, SASRec, BERT4Rec)}
BASELINES = tuple(n for n in MODEL_NAMES if n not in MODELS)


def build_model(name: str, cfg: ModelConfig) -> SequentialRecommender:
    if name not in MODELS:
        hint = " (pop is a baseline with nothing to train: use it in evaluation)" if name in BASELINES else ""
        raise UserError(f"unknown model {name!r}{hint}; available: {', '.join(MODEL_NAMES)}")
    if name in ("sasrec", "bert4rec") and cfg.hidden % cfg.heads:
        raise UserError(f"--hidden {cfg.hidden} must be divisible by --heads {cfg.heads}")
    return MODELS[name](cfg)
