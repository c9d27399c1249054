"""From ``--data`` to sequences, a split and (optionally) a client partition: the one entry point commands use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedseqrec.data.cleaning import CleaningOptions, CleaningReport, clean, keep_most_recent
from fedseqrec.data.formats import load_interactions, resolve_path
from fedseqrec.data.interactions import Interactions
from fedseqrec.data.partition import Partition, partition_users
from fedseqrec.data.sequences import SequenceData, build_sequences
from fedseqrec.data.shop import ShopConfig, generate_shop
from fedseqrec.data.splits import Split, make_split
from fedseqrec.data.store import is_prepared, load_prepared
from fedseqrec.errors import UserError


@dataclass
class DataConfig:
    """Everything that decides which interactions, split and partition a command works on."""

    data: str = "shop"  # a built-in name (shop) or a file or folder
    format: str = "auto"
    seed: int = 0
    columns: str | None = None  # "user=COL,item=COL,timestamp=COL[,event=COL,rating=COL,query=COL]"
    sep: str | None = None
    time_unit: str = "auto"  # auto, s or ms
    min_rating: float | None = None
    user_core: int = 0
    item_core: int = 0
    max_len: int | None = None  # keep each user's most recent events
    split: str = "leave-one-out"
    valid_quantile: float = 0.8
    test_quantile: float = 0.9
    partition: str | None = None
    clients: int | None = None
    alpha: float = 0.5
    attribute: str | None = None
    category: str | None = None
    shop: ShopConfig = field(default_factory=ShopConfig)

    def cleaning(self) -> CleaningOptions:
        return CleaningOptions(min_rating=self.min_rating, user_core=self.user_core, item_core=self.item_core)

    def partition_params(self) -> dict:
        return {
            "scheme": self.partition,
            "clients": self.clients,
            "alpha": self.alpha,
            "attribute": self.attribute,
            "category": self.category,
            "seed": self.seed,
        }


@dataclass
class Dataset:
    source: str
    format: str
    sequences: SequenceData
    split: Split
    partition: Partition | None
    cleaning: CleaningReport | None  # None for a prepared folder (cleaned when it was prepared)
    options: dict  # what produced the sequences: cleaning options, max length, shop parameters


def load_dataset(cfg: DataConfig) -> Dataset:
    if cfg.data == "shop":
        shop = ShopConfig(**{**asdict(cfg.shop), "seed": cfg.seed})
        return _from_log(generate_shop(shop), cfg, {"shop": asdict(shop)})
    path = resolve_path(cfg.data)
    if cfg.format in ("auto", "prepared") and is_prepared(path):
        return _from_prepared(path, cfg)
    log = load_interactions(path, cfg.format, cfg.columns, cfg.sep, cfg.time_unit)
    return _from_log(log, cfg, {})


def _from_log(log: Interactions, cfg: DataConfig, extra: dict) -> Dataset:
    events, report = clean(log, cfg.cleaning())
    if cfg.max_len is not None:
        events = keep_most_recent(events, cfg.max_len)
    sequences = build_sequences(events, log.user_features, log.item_features)
    options = {**asdict(cfg.cleaning()), "max_len": cfg.max_len, "time_unit": cfg.time_unit, **extra}
    return Dataset(
        source=log.source,
        format=log.format,
        sequences=sequences,
        split=make_split(sequences, cfg.split, cfg.valid_quantile, cfg.test_quantile),
        partition=_partition(sequences, cfg),
        cleaning=report,
        options=options,
    )


def _from_prepared(path: Path, cfg: DataConfig) -> Dataset:
    if cfg.cleaning() != CleaningOptions() or cfg.max_len is not None:
        raise UserError(
            f"{path}: is a prepared dataset, already cleaned and truncated; cleaning options apply when you run "
            "`fedseqrec data prepare`"
        )
    manifest, sequences, split, partition = load_prepared(path)
    if split.name != cfg.split or (cfg.split == "temporal" and not _same_quantiles(split, cfg)):
        split = make_split(sequences, cfg.split, cfg.valid_quantile, cfg.test_quantile)
    if cfg.partition is None:
        partition = None
    elif partition is None or manifest.get("partition_request") != cfg.partition_params():
        partition = _partition(sequences, cfg)
    return Dataset(
        source=str(path),
        format="prepared",
        sequences=sequences,
        split=split,
        partition=partition,
        cleaning=None,
        options=manifest.get("options", {}),
    )


def _same_quantiles(split: Split, cfg: DataConfig) -> bool:
    return (split.params.get("valid_quantile"), split.params.get("test_quantile")) == (
        cfg.valid_quantile,
        cfg.test_quantile,
    )


def _partition(sequences: SequenceData, cfg: DataConfig) -> Partition | None:
    if cfg.partition is None:
        if cfg.clients is not None:
            raise UserError("--clients needs --partition (per-user, iid, dirichlet or attribute)")
        return None
    return partition_users(
        sequences,
        cfg.partition,
        clients=cfg.clients,
        seed=cfg.seed,
        alpha=cfg.alpha,
        attribute=cfg.attribute,
        category=cfg.category,
    )
