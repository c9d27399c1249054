"""The run folder of a federated run, and how a run resumes from it.

- ``config.json``   the run config (Flower's flat keys) and the fedseqrec version
- ``metrics.jsonl`` one line per completed round
- ``state.pt``      round, global weights, strategy state, best round: everything a resume needs, in one atomic file
- ``model.pt`` / ``model_last.pt`` + ``model.json``  best and last global weights (weights only)
- ``model_initial.pt``   the initial global model when a mechanism prepared one (trained on public users)
- ``metrics.json``  final validation and test metrics; ``summary.md``
- ``.lock``         held (``flock``) by the process using the folder: two processes never run one folder at once

A folder whose run completed no round (killed before its first ``state.pt``) can be resumed — from round 0, with
its own config — or given to ``--out`` again.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

from fedseqrec.data.dataset import DataConfig
from fedseqrec.data.record import SCHEMA, is_builtin, locate, run_folder_config
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.jsonio import dumps

STATE = "state.pt"
CONFIG = "config.json"
METRICS_LOG = "metrics.jsonl"
LOCK = ".lock"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    tmp.replace(path)


def read_config(folder: Path) -> dict:
    """A run folder's ``config.json`` — the one place it is read: a federation's (``run_config``: the flat run
    config) or a centralized run's (``data``, ``model``, ``train``), schema 1 (0.1) or 2 (with ``data_record``)."""
    try:
        config = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}: not a fedseqrec run folder ({CONFIG} unreadable: {err})") from err
    if not isinstance(config, dict) or config.get("schema", 1) > SCHEMA:
        raise UserError(f"{folder / CONFIG}: written by a newer fedseqrec (schema {config.get('schema')}); upgrade")
    return config


def recorded_run(folder: Path) -> RunConfig:
    """A federated run's configuration as recorded (its data not looked for)."""
    config = read_config(folder)
    if "run_config" not in config:
        raise UserError(f"{folder}: holds the results of `fedseqrec train`, not a federated run")
    try:
        return RunConfig.from_run_config(config["run_config"])
    except (TypeError, AttributeError) as err:
        raise UserError(f"{folder / CONFIG}: unreadable run config ({err})") from err


def recorded_data(folder: Path, given: str | None = None, find: bool = True) -> DataConfig:
    """The data a run folder's model was trained on, for ``evaluate``, ``recommend``, ``serve``, ``audit``: the
    one reader of both kinds of run folder (a federation's flat run config, a centralized run's sections), the
    whole dataset (a federation's clients held parts of it). ``given``: ``--data``, refused unless it holds what
    the run recorded (see :mod:`fedseqrec.data.record`); ``find=False``: the data as recorded, not looked for."""
    folder, config = Path(folder), read_config(folder)
    if "run_config" in config:
        data = replace(recorded_run(folder).data, partition=None, clients=None)
    else:
        try:
            data = DataConfig.from_dict(config.get("data") or {})
        except (TypeError, AttributeError) as err:
            raise UserError(f"{folder / CONFIG}: unreadable data config ({err})") from err
    if not find:
        return data
    return replace(data, data=locate(data.data, config.get("data_record"), given, str(folder)))


def recorded_protocol(folder: Path) -> str:
    """The ranking protocol a run folder's figures were measured under (a federation's or a centralized run's),
    so a later ``evaluate`` measures the same way unless told otherwise."""
    config = read_config(Path(folder))
    if "run_config" in config:
        return recorded_run(Path(folder)).evaluation.protocol
    return ((config.get("train") or {}).get("evaluation") or {}).get("protocol", "full")


def data_identity(folder: Path) -> tuple:
    """What makes two runs' figures comparable: the same events (the data's fingerprint, or the generator's
    options), cleaned, split and predicted alike; partitions, audits and attacks may differ."""
    data, record = recorded_data(folder, find=False), read_config(folder).get("data_record") or {}
    if is_builtin(data.data):
        source = (data.data, data.seed, data.shop)
    else:  # a folder from before the data record: its file's name is what is known of it
        source = record.get("fingerprint") or Path(data.data).name
    return (
        source,
        data.task,
        data.format,
        data.columns,
        data.sep,
        data.time_unit,
        data.min_rating,
        data.k_core,
        data.user_core,
        data.item_core,
        data.split,
        data.valid_quantile,
        data.test_quantile,
    )


def _config_kind(path: Path) -> str | None:
    """What ``config.json`` says the folder holds: "federated", "centralized", or None (none / unreadable)."""
    try:
        config = read_config(path)
    except UserError:
        return None
    return "federated" if "run_config" in config else "centralized"


def _what_is_there(path: Path) -> str:
    """What a folder without a resumable run holds, in words."""
    kind = _config_kind(path)
    if kind is None:
        return "not a fedseqrec run folder (a run folder holds config.json and state.pt after its first round)"
    if kind == "centralized":
        return "holds the results of `fedseqrec train` (a centralized model), not a federated run"
    return "holds a federated run that completed no round (no state.pt)"


def _unfinished_run(path: Path) -> bool:
    """A federated run that was stopped before its first round completed."""
    return _config_kind(path) == "federated" and not (path / STATE).exists()


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: int | None = None

    def lock(self) -> RunFolder:
        """Hold the folder for this process (released when it ends, or by :meth:`release`): a second process —
        two ``--resume`` of one run — is refused instead of training the same round twice."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(
                f"{self.path}: in use by another fedseqrec process{f' (pid {holder})' if holder else ''}; wait "
                "for it to end"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd
        for stale in self.path.glob(".*.tmp-*"):  # half-written by a process killed while saving (none runs now)
            stale.unlink(missing_ok=True)
        return self

    def release(self) -> None:
        if self._lock is not None:
            # Unlock first: a process forked while the folder was held shares this lock through its copy of the
            # descriptor, and closing ours alone would leave the folder held until that process ends.
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

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
        if (path / CONFIG).exists() and not _unfinished_run(path):
            raise UserError(f"--out {path}: {_what_is_there(path)}; choose another --out")

    @classmethod
    def create(cls, path: Path, cfg: RunConfig) -> RunFolder:
        path = Path(path)
        cls.check_new(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path).lock()
        folder.write_config(cfg)
        (path / METRICS_LOG).write_text("")
        return folder

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder; anything else is refused with what is missing."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"--resume {path}: no such folder")
        if not (path / STATE).is_file() and not _unfinished_run(path):
            raise UserError(f"--resume {path}: {_what_is_there(path)}; nothing to resume")
        return cls(path).lock()

    def config(self) -> RunConfig:
        """The run's configuration, its data found from this working folder (see :func:`recorded_data`)."""
        cfg = recorded_run(self.path)
        record = read_config(self.path).get("data_record")
        return cfg.replace(data=locate(cfg.data.data, record, None, str(self.path)))

    def write_config(self, cfg: RunConfig) -> None:
        """The run's configuration; a resumed run keeps the data record it started with."""
        record = read_config(self.path).get("data_record") if (self.path / CONFIG).is_file() else None
        self.write_json(CONFIG, run_folder_config(cfg.data.data, cfg.to_run_config(), record=record))

    def write_json(self, name: str, value) -> None:
        _atomic_write(self.path / name, lambda tmp: tmp.write_text(dumps(value, indent=2) + "\n"))

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, lambda tmp: tmp.write_text(text))

    def save_tensors(self, name: str, value: dict) -> None:
        import torch  # here: the commands that only read a run folder's JSON should not pay torch's import

        _atomic_write(self.path / name, lambda tmp: torch.save(value, tmp))

    def save_model(self, state: dict, info: dict, name: str = "model.pt") -> None:
        """The best weights, and first ``model_info.json`` naming them by SHA-256 (their round, their score): a
        service that loads the new weights finds their description already there."""
        import torch  # (see save_tensors)

        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        self.write_json("model_info.json", {**info, "weights": name, "sha256": hashlib.sha256(data).hexdigest()})
        _atomic_write(self.path / name, lambda tmp: tmp.write_bytes(data))

    def load_state(self) -> dict:
        import torch  # (see save_tensors)

        try:
            return torch.load(self.path / STATE, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises unrelated types for truncated or foreign bytes
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            # (never pass on torch's advice to load with weights_only=False: that would run pickled code)
            if "weights_only" in reason or not reason:
                reason = "truncated, or not a file fedseqrec wrote"
            raise UserError(f"{self.path / STATE}: unreadable run state ({type(err).__name__}: {reason})") from err

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
