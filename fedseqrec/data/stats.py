"""Dataset statistics: what ``fedseqrec data stats`` prints and ``data prepare`` saves as ``stats.json``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np

from fedseqrec.data.cleaning import cleaning_summary
from fedseqrec.data.dataset import Dataset
from fedseqrec.data.partition import category_skew, dominant_categories
from fedseqrec.errors import UserError

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def dataset_stats(ds: Dataset) -> dict:
    seq = ds.sequences
    lengths = seq.lengths[1:]
    event_counts = np.bincount(seq.events, minlength=len(seq.vocab.events))
    stats = {
        "source": ds.source,
        "format": ds.format,
        "users": seq.n_users,
        "items": seq.n_items,
        "interactions": seq.n_interactions,
        "density": seq.n_interactions / (seq.n_users * seq.n_items),
        "events": {str(seq.vocab.events[i]): int(event_counts[i]) for i in range(1, len(seq.vocab.events))},
        "searches_with_query": int((seq.queries > 0).sum()),
        "sequence_length": {
            "mean": float(lengths.mean()),
            **{f"p{int(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES},
        },
        "time_span": None
        if ds.options.get("timestamps") == "file order"
        else {"first": float(seq.timestamps.min()), "last": float(seq.timestamps.max())},
        "split": {
            "name": ds.split.name,
            **ds.split.params,
            "train_interactions": ds.split.n_train_interactions,
            "valid_targets": ds.split.n_valid,
            "test_targets": ds.split.n_test,
        },
        "user_features": list(seq.user_features.columns),
        "item_features": list(seq.item_features.columns),
    }
    if ds.cleaning is not None:
        stats["cleaning"] = {**asdict(ds.cleaning), "summary": cleaning_summary(ds.cleaning)}
    if ds.partition is not None:
        stats.update(_partition_stats(ds))
    return stats


def _partition_stats(ds: Dataset) -> dict:
    part, seq = ds.partition, ds.sequences
    lengths = seq.lengths
    clients = []
    for k, users in enumerate(part.clients()):
        clients.append(
            {
                "client": k,
                "name": part.name(k),
                "users": len(users),
                "interactions": int(lengths[users].sum()),
                "valid_targets": int((ds.split.valid_pos[users] >= 0).sum()),
                "test_targets": int((ds.split.test_pos[users] >= 0).sum()),
            }
        )
    out = {"partition": {"scheme": part.scheme, **part.params, "clients": part.n_clients}, "clients": clients}
    try:
        groups, column = dominant_categories(seq, part.params.get("category"))
        out["partition"]["category_skew"] = {"by": column, "value": category_skew(part, groups)}
    except UserError:
        pass  # no item categories: skew is simply not reported
    return out


def format_stats(stats: dict) -> str:
    """A short human-readable summary of :func:`dataset_stats`."""
    q = stats["sequence_length"]
    split = stats["split"]
    lines = [
        f"source        {stats['source']} ({stats['format']})",
        f"users         {stats['users']:,}",
        f"items         {stats['items']:,}",
        f"interactions  {stats['interactions']:,}  (density {stats['density']:.4%})",
        "events        " + ", ".join(f"{k} {v:,}" for k, v in stats["events"].items()),
        f"seq. length   mean {q['mean']:.1f}  min {q['p0']:.0f}  p25 {q['p25']:.0f}  median {q['p50']:.0f}  "
        f"p75 {q['p75']:.0f}  p90 {q['p90']:.0f}  p99 {q['p99']:.0f}  max {q['p100']:.0f}",
        "time span     "
        + (
            f"{_date(stats['time_span']['first'])} .. {_date(stats['time_span']['last'])}"
            if stats["time_span"]
            else "no timestamps: the order in the file is the time order"
        ),
        f"split         {split['name']}: {split['train_interactions']:,} training interactions, "
        f"{split['valid_targets']:,} validation and {split['test_targets']:,} test targets",
    ]
    cleaning = (stats.get("cleaning") or {}).get("summary")
    if cleaning:
        lines.insert(4, f"cleaning      {cleaning}")
    if "partition" in stats:
        part = stats["partition"]
        skew = part.get("category_skew")
        note = f", category skew {skew['value']:.3f} by {skew['by']}" if skew else ""
        lines.append(f"partition     {part['scheme']}: {part['clients']} clients{note}")
        lines.extend(_client_table(stats["clients"]))
    return "\n".join(lines)


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _client_table(clients: list[dict], limit: int = 20) -> list[str]:
    rows = ["  client  name                  users  interactions  test targets"]
    shown = clients if len(clients) <= limit else clients[: limit // 2] + clients[-limit // 2 :]
    for i, c in enumerate(shown):
        if len(clients) > limit and i == limit // 2:
            rows.append(f"  ... {len(clients) - limit} more clients ...")
        rows.append(
            f"  {c['client']:>6}  {c['name'][:20]:<20}  {c['users']:>5}  "
            f"{c['interactions']:>12,}  {c['test_targets']:>12,}"
        )
    return rows
