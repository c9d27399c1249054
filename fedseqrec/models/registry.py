"""Models by name. Each model's module is imported when it is first built: bert4rec pulls in `transformers`,
which takes seconds to import, and every simulated or deployed client process pays for what it imports."""

from __future__ import annotations

import importlib

from fedseqrec.data.interactions import AD_EVENTS
from fedseqrec.data.sequences import SequenceData
from fedseqrec.errors import UserError
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.config import BASELINES, MODEL_NAMES, ModelConfig

MODELS: dict[str, str] = {
    "gru4rec": "fedseqrec.models.rnn:GRU4Rec",
    "lstm": "fedseqrec.models.rnn:LSTMRec",
    "sasrec": "fedseqrec.models.sasrec:SASRec",
    "bert4rec": "fedseqrec.models.bert4rec:BERT4Rec",
    "query-sasrec": "fedseqrec.models.query_sasrec:QuerySASRec",
    "din-esmm": "fedseqrec.models.din:DINESMM",
    "lr": "fedseqrec.models.logistic:AdLogistic",
}


def model_class(name: str) -> type[SequentialRecommender]:
    if name not in MODELS:
        hint = f" ({name} is a baseline with nothing to train: use it in evaluation)" if name in BASELINES else ""
        raise UserError(f"unknown model {name!r}{hint}; available: {', '.join(MODEL_NAMES)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, cfg: ModelConfig, data: SequenceData | None = None) -> SequentialRecommender:
    """``data``: what a model reads from the data besides its counts (the query-aware model: the items' words)."""
    model = model_class(name)
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "name": name})
    cfg.validate()
    built = model(cfg)
    if data is not None and built.reads_queries and not data.has_queries:
        raise UserError(
            "query-sasrec reads search queries, and no event of this data has one (--task search with a "
            "log whose searches carry a `query` column)"
        )
    if data is not None and hasattr(built, "attach_words"):
        built.attach_words(data.tokens.items)
    return built


def model_config_for(data: SequenceData, base: ModelConfig) -> ModelConfig:
    """``base`` with the item, event and query-word counts of ``data``, and its ad events."""
    words = data.tokens.n_tokens
    names = [str(e) for e in data.vocab.events]
    ads = tuple(names.index(e) if e in names else -1 for e in AD_EVENTS) if set(AD_EVENTS) & set(names) else ()
    counts = {"n_items": data.n_items, "n_events": len(names) - 1, "n_query_tokens": words, "ad_events": ads}
    return ModelConfig.from_dict({**base.to_dict(), **counts})
