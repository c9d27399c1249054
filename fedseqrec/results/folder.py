"""The run folder of a federated run, and how a run resumes from it.

- ``config.json``   the run config (Flower's flat keys) and the fedseqrec version
- ``metrics.jsonl`` one line per completed round
- ``state.pt``      round, global weights, strategy state, best round: everything a resume needs, in one atomic file
- ``model.pt`` / ``model_last.pt`` + ``model.json``  best and last global weights (weights only)
- ``model_initial.pt``   the initial global model when a mechanism prepared one (trained on public users)
- ``metrics.json``  final validation and test metrics; ``summary.md``
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedseqrec import __version__
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.jsonio import dumps

STATE = "state.pt"
CONFIG = "config.json"
METRICS_LOG = "metrics.jsonl"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    tmp.replace(path)


def _what_is_there(path: Path) -> str:
    """What a folder without a resumable run holds, in words."""
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return "not a fedseqrec run folder (a run folder holds config.json and state.pt after its first round)"
    if not isinstance(config, dict) or "run_config" not in config:
        return "holds the results of `fedseqrec train` (a centralized model), not a federated run"
    return "holds a federated run that completed no round (no state.pt)"


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @staticmethod
    def check_new(path: Path) -> None:
        """Refuse an ``--out`` that cannot hold a new run, saying what is there instead."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path}: is a file, not a folder; choose a folder for the run")
        if (path / STATE).is_file():
            raise UserError(
                f"--out {path}: already holds a run; continue it with --resume {path} or choose another --out"
            )
        if (path / CONFIG).exists():
            raise UserError(f"--out {path}: {_what_is_there(path)}; choose another --out")

    @classmethod
    def create(cls, path: Path, cfg: RunConfig) -> RunFolder:
        path = Path(path)
        cls.check_new(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        folder.write_json(CONFIG, {"fedseqrec": __version__, "run_config": cfg.to_run_config()})
        (path / METRICS_LOG).write_text("")
        return folder

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder; anything else is refused with what is missing."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"--resume {path}: no such folder")
        if not (path / STATE).is_file():
            raise UserError(f"--resume {path}: {_what_is_there(path)}; nothing to resume")
        return cls(path)

    def config(self) -> RunConfig:
        try:
            values = json.loads((self.path / CONFIG).read_text())["run_config"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{self.path / CONFIG}: unreadable run config ({err})") from err
        return RunConfig.from_run_config(values)

    def write_config(self, cfg: RunConfig) -> None:
        self.write_json(CONFIG, {"fedseqrec": __version__, "run_config": cfg.to_run_config()})

    def write_json(self, name: str, value) -> None:
        _atomic_write(self.path / name, lambda tmp: tmp.write_text(dumps(value, indent=2) + "\n"))

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, lambda tmp: tmp.write_text(text))

    def save_tensors(self, name: str, value: dict) -> None:
        import torch  # here: the commands that only read a run folder's JSON should not pay torch's import

        _atomic_write(self.path / name, lambda tmp: torch.save(value, tmp))

    def load_state(self) -> dict:
        import torch  # (see save_tensors)

        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as err:
            raise UserError(f"{self.path / STATE}: unreadable run state ({err})") from err

    def append_round(self, record: dict) -> None:
        with (self.path / METRICS_LOG).open("a") as log:
            log.write(dumps(record) + "\n")

    def rounds(self) -> list[dict]:
        path = self.path / METRICS_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def keep_rounds_until(self, last_round: int) -> list[dict]:
        """Drop log lines of rounds after the saved state (a run stopped between the two writes)."""
        kept = [r for r in self.rounds() if r["round"] <= last_round]
        self.write_text(METRICS_LOG, "".join(dumps(r) + "\n" for r in kept))
        return kept
