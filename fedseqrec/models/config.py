"""Model and fitting options: plain dataclasses, importable without torch (the CLI builds its help from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fedseqrec.errors import UserError
from fedseqrec.options import (
    check,
    non_negative,
    non_negative_int,
    one_of,
    option,
    positive,
    positive_int,
    section,
    span,
    within,
)

# pop: the most-popular baseline; text-match: the query's words against the items' (--task search); cooc: item pairs
# counted from histories (privately with --cooc-epsilon); din-esmm and lr: ad click and conversion (--task ctr)
MODEL_NAMES = ("gru4rec", "lstm", "sasrec", "bert4rec", "query-sasrec", "din-esmm", "pop", "text-match", "cooc", "lr")
BASELINES = ("pop", "text-match", "cooc")  # nothing to train: counted
TRAINABLE_MODELS = tuple(name for name in MODEL_NAMES if name not in BASELINES)
COUNTED_MODELS = ("cooc",)  # a federation counts it in its silos and releases it once (server.cooccurrence)
FEDERATED_MODELS = (*TRAINABLE_MODELS, *COUNTED_MODELS)
ATTENTION_MODELS = ("sasrec", "bert4rec", "query-sasrec")  # --heads splits --hidden
PREFIX_MODELS = ("sasrec", "gru4rec", "lstm")  # next-item models that --window prefixes can train
FREEZE = ("none", "items")
MODEL = "model"
FIT = "training"
HARDWARE = "hardware"
PRECISIONS = ("fp32", "bf16")


def device_spec(value: str) -> str | None:
    """auto, cpu, cuda or cuda:N (whether that device exists is asked of torch when the run starts)."""
    head, _, index = value.partition(":")
    if value in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return None
    return "must be auto, cpu, cuda or cuda:N"


@dataclass
class DeviceConfig:
    """Where a model computes and in what precision; data is always prepared on the CPU."""

    device: str = option(
        "auto",
        "where models train and score: auto (the first CUDA GPU when torch sees one, else the CPU), cpu, cuda, cuda:N",
        check=device_spec,
        group=HARDWARE,
    )
    precision: str = option(
        "fp32",
        "bf16: the forward pass and the loss under bfloat16 autocast (GPUs; CPUs with AVX-512 BF16), weights and "
        "optimiser in float32; fp32: no autocast",
        choices=PRECISIONS,
        group=HARDWARE,
    )


@dataclass
class ModelConfig:
    """Which sequence recommender, and its hyper-parameters; the item and event counts come from the data."""

    name: str = option("sasrec", "sequence recommender (pop: baseline)", choices=MODEL_NAMES, key="model", group=MODEL)
    n_items: int = 0
    n_events: int = 0
    n_query_tokens: int = 0  # words of the data's search queries and item texts (data/text.py)
    ad_events: tuple = ()  # event ids of (impression, ad click, ad conversion) in data with ads, -1 where absent
    hidden: int = option(64, "embedding and hidden size", check=positive_int, group=MODEL, search=one_of(32, 64, 128))
    layers: int = option(
        2, "Transformer blocks or recurrent layers", check=positive_int, group=MODEL, search=span(1, 3)
    )
    heads: int = option(2, "attention heads (sasrec, bert4rec)", check=positive_int, group=MODEL)
    inner: int = option(256, "feed-forward width (sasrec, bert4rec)", check=positive_int, group=MODEL)
    dropout: float = option(0.5, "dropout probability", check=within(0, 1), group=MODEL, search=span(0.1, 0.7))
    max_len: int = option(
        50,
        "window of most recent events the model sees (one training example per user)",
        check=positive_int,
        group=MODEL,
        search=one_of(50, 100, 200),
    )
    side_info: bool = option(
        True, "no event-type and time-gap embeddings (default: use them where the data has them)", group=MODEL
    )
    mask_ratio: float = option(
        0.2,
        "bert4rec: share of items masked",
        check=within(0, 1, low_open=True),
        group=MODEL,
        search=span(0.1, 0.6),
    )
    loss: str = option(
        "ce",
        "full softmax cross-entropy, or sampled negatives for very large catalogues",
        choices=("ce", "sampled"),
        group=MODEL,
    )
    label_smoothing: float = option(
        0.2,
        "label smoothing of the cross-entropy (regularises the item scores on small data)",
        check=within(0, 1),
        group=MODEL,
        search=span(0.0, 0.4),
    )
    negatives: int = option(100, "sampled loss: negatives per batch", check=positive_int, group=MODEL)
    tie_items: bool = option(
        False,
        "score items with the input item embeddings (tied, as in the SASRec paper): half the item parameters, "
        "which sparse catalogues need (Amazon Beauty); not under client-local DP-SGD",
        group=MODEL,
    )
    positions: str = option(
        "from-start",
        "sasrec: position ids counted from the window's first item (RecBole), or back from its last, as the SASRec "
        "authors' left-padded windows have them (the item to predict always after position 0; bert4rec always "
        "counts from the end)",
        choices=("from-start", "from-end"),
        group=MODEL,
    )
    low_pass: float = option(
        0.0,
        "sasrec: weight of a causal low-pass filter mixed with each block's attention (BSARec's inductive bias, "
        "Shin et al. 2024, with a causal mean for its Fourier filter); 0: attention alone",
        check=within(0, 1),
        group=MODEL,
    )
    low_pass_filter: str = option(
        "causal",
        "sasrec with --low-pass: causal (a position's mean of the last --low-pass-width states), or fourier "
        "(BSARec's own: the lowest Fourier components of the whole sequence, as if left-padded to --max-len; it "
        "reads later positions, so it trains only with --window prefixes)",
        choices=("causal", "fourier"),
        group=MODEL,
    )
    low_pass_width: int = option(
        10,
        "sasrec with --low-pass: causal: the items the filter averages over; fourier: BSARec's c (the filter keeps "
        "the c // 2 + 1 lowest frequencies of a --max-len window)",
        check=positive_int,
        group=MODEL,
    )
    freeze: str = option(
        "none",
        "parameters never trained: items = the item embedding table and the scorer (keeps them out of DP's noise; "
        "with --public-users they are pretrained on the public users first)",
        choices=FREEZE,
        group=MODEL,
    )

    def check_options(self) -> None:
        """What can be checked before the data is loaded."""
        check(self)
        if self.name in ATTENTION_MODELS and self.hidden % self.heads:
            raise UserError(f"--hidden {self.hidden} must be divisible by --heads {self.heads}")
        if self.low_pass and self.name not in ("sasrec", "query-sasrec"):
            raise UserError(f"--low-pass mixes a filter into SASRec's blocks; {self.name} has none: leave it at 0")

    def check_training(self, window: str, private: bool) -> None:
        """What the training examples (``--window``) allow: prefixes are plain training of a next-item model, and
        a filter that reads later positions needs them (every other position of a window is a target)."""
        if window == "prefixes" and self.name not in PREFIX_MODELS:
            raise UserError(f"--window prefixes trains next-item models ({', '.join(PREFIX_MODELS)}), not {self.name}")
        if window == "prefixes" and private:
            raise UserError(
                "--window prefixes makes one example of every training event, and DP clips per example or per "
                "user's window: use --window random or recent with a privacy mechanism"
            )
        if self.low_pass and self.low_pass_filter == "fourier" and window != "prefixes":
            raise UserError(
                "--low-pass-filter fourier reads later positions, which every window's positions predict: train it "
                "with --window prefixes (or use --low-pass-filter causal)"
            )

    def validate(self) -> None:
        self.check_options()
        if self.n_items < 1:
            raise UserError(f"the data has no items to recommend (n_items = {self.n_items})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if k == "ad_events" else v) for k, v in values.items() if k in known}
        return cls(**values)


def linear_decay(step: int, total: int) -> float:
    """Share of the base learning rate at ``step`` (0-based) of ``total``: 1, falling linearly to ``1 / total`` at
    the last step and 0 after it."""
    return max(0.0, (total - step) / total)


@dataclass
class FitConfig:
    """How a model is fitted on a set of users: batches of users, AdamW, one training window per user."""

    batch_size: int = option(32, "users per batch", check=positive_int, group=FIT, search=one_of(32, 64, 128, 256))
    lr: float = option(2e-3, "AdamW learning rate", check=positive, group=FIT, search=span(1e-4, 1e-2, log=True))
    # Decoupled (AdamW): with label smoothing, what keeps a small dataset from overfitting.
    weight_decay: float = option(
        1.0, "AdamW weight decay", check=non_negative, group=FIT, search=span(1e-3, 2.0, log=True)
    )
    lr_schedule: str = option(
        "constant",
        "learning rate: constant, or falling linearly to 0 over the run: "
        "by step to the end of --epochs (train; the BERT4Rec authors' schedule), by round in a federation (round r "
        "of --rounds R trains at lr·(R−r+1)/R)",
        choices=("constant", "linear"),
        group=FIT,
    )
    window: str = option(
        "random",
        "training examples: a window per user, a random stretch of a long history each time or the most recent "
        "(every position a target); or prefixes: every training event an example of its own with the events before "
        "it (BSARec's and ICLRec's data; --batch-size then counts examples, an epoch has one per target; plain "
        "training of next-item models, not under DP-SGD)",
        choices=("random", "recent", "prefixes"),
        group=FIT,
    )
    batching: str = option(
        "random",
        "users per batch in plain training: drawn at random, or of similar history length (each user still once "
        "per epoch; much faster when most histories are far shorter than --max-len, since a batch is cut to its "
        "longest user); DP-SGD always draws Poisson batches",
        choices=("random", "length"),
        group=FIT,
    )
    threads: int = option(1, "torch CPU threads (0: torch's default)", check=non_negative_int, group=FIT)
    hardware: DeviceConfig = section(DeviceConfig)

    @property
    def random_window(self) -> bool:
        return self.window == "random"

    @property
    def by_length(self) -> bool:
        return self.batching == "length"
