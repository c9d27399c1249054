"""What every benchmark's JSON carries besides its rows: its name, the command that produced it, the machine."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from pathlib import Path

import torch


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


ABSOLUTE = re.compile(r"^(/|[A-Za-z]:\\)")


def portable(value, data_dir: Path | None = None):
    """``value`` with no path of the machine that ran it: the data directory becomes ``$FEDSEQREC_DATA_DIR``, any
    other absolute path its last part (committed results are read on other machines)."""
    if isinstance(value, dict):
        return {k: portable(v, data_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, data_dir) for v in value]
    if not isinstance(value, str) or not ABSOLUTE.match(value):
        return value
    if data_dir is not None and value.startswith(str(data_dir)):
        return "$FEDSEQREC_DATA_DIR" + value[len(str(data_dir)) :]
    return Path(value).name


def spread(values: list[float], each: str = "per_seed") -> dict:
    """Figures over seeds (or runs): mean and standard deviation to 4 places, and every value under ``each``."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), each: values}


def write_report(out: Path, name: str, command: str, rows: list[dict], **more) -> None:
    """``out``: the benchmark's JSON — its rows, the machine, and ``more`` (a summary over seeds, for one)."""
    report = {"benchmark": name, "command": command, "machine": machine(), "rows": rows, **more}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(portable(report), indent=1) + "\n")
