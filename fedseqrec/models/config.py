"""Model and training configuration: plain dataclasses, importable without torch (the CLI builds its help
from them)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from fedseqrec.errors import UserError

MODEL_NAMES = ("gru4rec", "lstm", "sasrec", "bert4rec", "pop")  # pop: the most-popular baseline


@dataclass
class ModelConfig:
    """Hyper-parameters of a sequence recommender; the item and event counts come from the data."""

    n_items: int = 0
    n_events: int = 0
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256  # feed-forward width of Transformer blocks
    dropout: float = 0.5
    max_len: int = 50
    side_info: bool = True  # event-type and time-gap embeddings where the data has them
    mask_ratio: float = 0.2  # bert4rec cloze objective
    loss: str = "ce"  # "ce" (full softmax) or "sampled"
    label_smoothing: float = 0.2  # of the cross-entropy: regularises the item scores on small data
    negatives: int = 100  # sampled loss: shared negatives per batch

    def validate(self) -> None:
        positive = {
            "hidden": self.hidden,
            "layers": self.layers,
            "heads": self.heads,
            "inner": self.inner,
            "max_len": self.max_len,
            "negatives": self.negatives,
            "n_items": self.n_items,
        }
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise UserError(f"--mask-ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.loss not in ("ce", "sampled"):
            raise UserError(f"--loss must be ce or sampled, got {self.loss!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainConfig:
    model: str = "sasrec"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1.0  # decoupled (AdamW): with label smoothing, what keeps a small dataset from overfitting
    patience: int = 25  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 1
    random_window: bool = True  # each epoch, a random window of each long history (one per user)
    max_seconds: float | None = None  # stop training after this much training time
    threads: int = 0  # torch CPU threads; 0 = torch's default
    eval_protocol: str = "full"

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise UserError(f"unknown model {self.model!r}; available: {', '.join(MODEL_NAMES)}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.patience < 1:
            raise UserError("--weight-decay must be >= 0 and --patience >= 1")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UserError(f"--max-seconds must be positive, got {self.max_seconds}")
