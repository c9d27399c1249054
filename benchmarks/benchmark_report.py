"""What every benchmark's JSON carries besides its rows: its name, the command that produced it, the machine."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def write_report(out: Path, name: str, command: str, rows: list[dict]) -> None:
    report = {"benchmark": name, "command": command, "machine": machine(), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
