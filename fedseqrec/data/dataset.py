"""From ``--data`` to sequences, a split and (optionally) a client partition: the one entry point commands use."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from fedseqrec.data.canaries import apply_plan, audit_plan, canary_ids
from fedseqrec.data.cleaning import CleaningOptions, CleaningReport, clean, keep_most_recent
from fedseqrec.data.eventlog import PRESETS
from fedseqrec.data.formats import FORMATS, load_interactions, resolve_path
from fedseqrec.data.interactions import Interactions
from fedseqrec.data.ordered import ORDERED_FORMATS
from fedseqrec.data.parsing import TIME_UNITS
from fedseqrec.data.partition import SCHEMES, Partition, partition_users
from fedseqrec.data.poisoning import add_fake_users, fake_user_ids, target_item, train_only
from fedseqrec.data.sequences import SequenceData, ad_event_ids, build_sequences
from fedseqrec.data.shop import ShopConfig, generate_shop
from fedseqrec.data.splits import SPLITS, Split, impression_split, make_split, search_split
from fedseqrec.data.store import is_prepared, load_prepared
from fedseqrec.data.tasks import TASKS, task_of
from fedseqrec.errors import UserError
from fedseqrec.options import non_negative_int, option, positive, positive_int, section, within

PARTITION = "client partition"
POISONING = "poisoning (attack experiments)"
AUDIT = "privacy audit"


@dataclass
class DataConfig:
    """Everything that decides which interactions, split and partition a command works on."""

    data: str = option(
        "shop",
        "built-in dataset (shop) or a file/folder: RecBole atomic files, MovieLens, CSV/TSV/Parquet event log, or a "
        "folder written by `fedseqrec data prepare`",
        metavar="NAME_OR_PATH",
        group="data",
    )
    format: str = option("auto", f"layout of --data; presets: {', '.join(PRESETS)}", choices=FORMATS, group="data")
    seed: int = option(0, "seed for generated data and partitions", group="data")
    task: str = option(
        "next-item",
        "what is predicted: " + "; ".join(f"{t.name}: {t.description}" for t in TASKS.values()),
        choices=tuple(TASKS),
        group="data",
    )
    columns: str | None = option(
        None,
        "column mapping for generic logs, e.g. user=visitorid,item=itemid,timestamp=ts,event=type "
        "(roles: user, item, timestamp, event, rating, query; click, purchase: ad labels 0/1, --task ctr)",
        metavar="ROLE=COL,...",
        group="data",
    )
    sep: str | None = option(None, "field separator of a text log (default: from the file)", group="data")
    time_unit: str = option(
        "auto",
        "unit of numeric timestamps (auto: milliseconds when values exceed 1e11)",
        choices=TIME_UNITS,
        group="data",
    )
    min_rating: float | None = option(
        None, "keep interactions rated at least this (implicit feedback); default keeps all", group="cleaning"
    )
    k_core: int = option(
        0,
        "k-core filter on users and items, iterated to a fixed point (0 = off)",
        check=non_negative_int,
        metavar="K",
        group="cleaning",
    )
    user_core: int | None = option(
        None, "k-core threshold for users only (overrides --k-core)", check=non_negative_int, group="cleaning"
    )
    item_core: int | None = option(
        None, "k-core threshold for items only (overrides --k-core)", check=non_negative_int, group="cleaning"
    )
    # Cuts the data itself (data commands); training commands have the model's --max-len instead.
    max_len: int | None = option(
        None, "keep each user's most recent N events", check=positive_int, group="cleaning", run_config=False
    )
    split: str = option("leave-one-out", "evaluation split", choices=SPLITS, group="split")
    valid_quantile: float = option(
        0.8, "temporal split: validation cut", check=within(0, 1, low_open=True), group="split"
    )
    test_quantile: float = option(0.9, "temporal split: test cut", check=within(0, 1, low_open=True), group="split")
    partition: str | None = option(None, "split users into federated clients", choices=SCHEMES, group=PARTITION)
    clients: int | None = option(
        None,
        "number of clients (silos); simulate and deploy default to 5 for iid and dirichlet",
        check=positive_int,
        metavar="K",
        group=PARTITION,
    )
    alpha: float = option(0.5, "dirichlet concentration (smaller = more skewed)", check=positive, group=PARTITION)
    attribute: str | None = option(
        None,
        "attribute partition: user feature, e.g. region, occupation, zip_code:1 (default: the first of region, "
        "occupation, zip_code)",
        metavar="COLUMN[:PREFIX]",
        group=PARTITION,
    )
    category: str | None = option(
        None,
        "dirichlet partition: item feature holding the category or genre (default: detected)",
        metavar="COLUMN",
        group=PARTITION,
    )
    fake_users: float = option(
        0.0,
        "shilling attack: add this share of fake users whose histories push --target-item (they train, are "
        "never evaluated)",
        check=within(0, 1),
        group=POISONING,
    )
    target_item: str | None = option(
        None,
        "the item the fake users push (default: one of the less popular half, drawn with --seed)",
        metavar="ITEM",
        group=POISONING,
    )
    audit_canaries: int = option(
        0,
        "privacy audit: canary users with random histories, each trained on with probability 1/2 (a fair coin, "
        "sealed in the run folder)",
        check=non_negative_int,
        group=AUDIT,
    )
    audit_users: int = option(
        0,
        "privacy audit: real users put to the same coin (tails: left out of training), the membership-inference "
        "attack's members and non-members",
        check=non_negative_int,
        group=AUDIT,
    )
    audit_seed: int | None = option(
        None,
        "the audit's coins (default: drawn from the OS when a run starts, recorded in its config)",
        check=non_negative_int,
        group=AUDIT,
    )
    shop: ShopConfig = section(ShopConfig)

    @property
    def audited(self) -> bool:
        return self.audit_canaries > 0 or self.audit_users > 0

    def with_audit_seed(self) -> DataConfig:
        """This config with the audit's coins fixed: a secret seed drawn now and recorded with the run."""
        if not self.audited or self.audit_seed is not None:
            return self
        return replace(self, audit_seed=secrets.randbits(31))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """The inverse of :meth:`to_dict` (a command's recorded ``config.json``); unknown keys are ignored."""
        known = {f.name for f in fields(cls)} - {"shop"}
        shop_fields = {f.name for f in fields(ShopConfig)}
        shop = ShopConfig(**{k: v for k, v in dict(values.get("shop") or {}).items() if k in shop_fields})
        return cls(**{k: v for k, v in values.items() if k in known}, shop=shop)

    def cleaning(self) -> CleaningOptions:
        user_core = self.k_core if self.user_core is None else self.user_core
        item_core = self.k_core if self.item_core is None else self.item_core
        return CleaningOptions(min_rating=self.min_rating, user_core=user_core, item_core=item_core)

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
    audit: dict | None = None  # the privacy audit's canaries, audited users and coins (data/canaries.py)


def load_dataset(cfg: DataConfig) -> Dataset:
    if cfg.data == "shop":
        shop = ShopConfig(**{**asdict(cfg.shop), "seed": cfg.seed})
        task = task_of(cfg.task)
        log = generate_shop(shop, searches=task.plants_searches, ads=task.plants_ads)
        return _from_log(log, cfg, {"shop": asdict(shop)})
    path = resolve_path(cfg.data)
    if cfg.format in ("auto", "prepared") and is_prepared(path):
        return _from_prepared(path, cfg)
    log = load_interactions(path, cfg.format, cfg.columns, cfg.sep, cfg.time_unit)
    if log.format in ORDERED_FORMATS:
        if cfg.split == "temporal":
            raise UserError(
                f"{path}: has no timestamps (the order in the file is the time order): use --split leave-one-out"
            )
        return _from_log(log, cfg, {"timestamps": "file order"})
    return _from_log(log, cfg, {})


def _from_log(log: Interactions, cfg: DataConfig, extra: dict) -> Dataset:
    events, report = clean(log, cfg.cleaning())
    if cfg.max_len is not None:
        events = keep_most_recent(events, cfg.max_len, report)
    if cfg.fake_users > 0:
        target = target_item(events, cfg.target_item, cfg.seed)
        events = add_fake_users(events, cfg.fake_users, target, cfg.seed)
    elif cfg.target_item is not None:
        raise UserError("--target-item needs --fake-users (the share of fake users that push it)")
    plan = None
    if cfg.audited and not task_of(cfg.task).ranks_items:
        raise UserError(
            f"the privacy audit scores next-item likelihoods; --task {cfg.task} has none (audit a "
            "next-item or search run)"
        )
    if cfg.audited:
        if cfg.audit_seed is None:
            raise UserError("--audit-canaries / --audit-users need --audit-seed here (a run draws one itself)")
        plan = audit_plan(events, cfg.audit_canaries, cfg.audit_users, cfg.audit_seed)
        events = apply_plan(events, plan)
    sequences = build_sequences(events, log.user_features, log.item_features)
    split = _split(sequences, cfg, log.source)
    options = {**asdict(cfg.cleaning()), "max_len": cfg.max_len, "time_unit": cfg.time_unit, "task": cfg.task, **extra}
    if cfg.fake_users > 0:
        fakes = fake_user_ids(sequences.vocab.users)
        split = train_only(split, fakes, sequences.lengths.astype(np.int64))
        options["poisoning"] = {"fake_users": int(len(fakes)), "target_item": target}
    if plan is not None:
        split = train_only(split, canary_ids(sequences.vocab.users), sequences.lengths.astype(np.int64))
    return Dataset(
        source=log.source,
        format=log.format,
        sequences=sequences,
        split=split,
        partition=_partition(sequences, cfg),
        cleaning=report,
        options=options,
        audit=plan,
    )


def _from_prepared(path: Path, cfg: DataConfig) -> Dataset:
    if cfg.fake_users > 0 or cfg.audited:
        raise UserError(f"{path}: fake users and audit canaries are added to a raw log, not to a prepared dataset")
    if cfg.cleaning() != CleaningOptions() or cfg.max_len is not None:
        raise UserError(
            f"{path}: is a prepared dataset, already cleaned and truncated; cleaning options apply when you run "
            "`fedseqrec data prepare`"
        )
    manifest, sequences, split, partition = load_prepared(path)
    own = task_of(cfg.task).own_split
    if own or split.name != cfg.split or (cfg.split == "temporal" and not _same_quantiles(split, cfg)):
        split = _split(sequences, cfg, str(path))
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


def _split(sequences: SequenceData, cfg: DataConfig, source: str) -> Split:
    task = task_of(cfg.task)
    if not task.own_split:
        return make_split(sequences, cfg.split, cfg.valid_quantile, cfg.test_quantile)
    if cfg.split != "leave-one-out":
        raise UserError(
            f"--task {cfg.task} has its own split (leave-one-out over its targets), not --split {cfg.split}"
        )
    if task.split == "searches":
        if not sequences.has_queries:
            raise UserError(
                f"{source}: no event carries a search query (a `query` column, see --columns): --task "
                "search ranks what searches found"
            )
        return search_split(sequences)
    ads = ad_event_ids(sequences)
    if not np.isin(sequences.events, ads).any():
        raise UserError(
            f"{source}: no ad impression (rows with `click` / `purchase` labels, see --columns): "
            "--task ctr predicts clicks and purchases of shown ads"
        )
    return impression_split(sequences, ads)


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
