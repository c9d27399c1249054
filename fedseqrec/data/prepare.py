"""``fedseqrec data prepare``: load, clean, split and partition once; save in the prepared format."""

from __future__ import annotations

from pathlib import Path

from fedseqrec import __version__
from fedseqrec.data.dataset import DataConfig, load_dataset
from fedseqrec.data.stats import dataset_stats
from fedseqrec.data.store import save_prepared


def prepare(cfg: DataConfig, out: Path) -> dict:
    """Write the prepared dataset to ``out`` (atomically) and return its statistics."""
    ds = load_dataset(cfg)
    stats = dataset_stats(ds)
    manifest = {
        "fedseqrec_version": __version__,
        "source": ds.source,
        "source_format": ds.format,
        "options": ds.options,
        "partition_request": cfg.partition_params() if cfg.partition else None,
        "counts": {k: stats[k] for k in ("users", "items", "interactions")},
    }
    save_prepared(out, ds.sequences, ds.split, ds.partition, manifest, stats)
    return stats
