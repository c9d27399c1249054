"""What a trial runs: ``fedseqrec train`` or ``fedseqrec simulate`` with the trial's options, into an ordinary run
folder, reporting its validation figure after every evaluated epoch or round so the study can prune it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.centralized.training import train_centralized
from fedseqrec.data.dataset import PARTITION, DataConfig
from fedseqrec.data.tasks import task_of
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.config import ModelConfig
from fedseqrec.options import section
from fedseqrec.server.loop import Progress
from fedseqrec.simulation.engine import simulate

# Reported after each evaluation: (step, validation figure) → why to stop the trial now, or None.
Report = Callable[[int, float], str | None]
DATA_TRUNCATION = ("data.max_len",)  # the data's own --max-len: not a flag of train or simulate
NOT_FLAGS = {"train": (*DATA_TRUNCATION, PARTITION), "simulate": (*DATA_TRUNCATION, "out")}  # (out: --out)


@dataclass
class TrainRun:
    """The options of ``fedseqrec train`` as one config (its flags: the data's, the model's and training's)."""

    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    train: TrainConfig = section(TrainConfig)


@dataclass
class SimulationSettings:
    """How ``simulate`` trials use this machine (not options of the run: they do not change its figures)."""

    client_cpus: float = 1.0
    client_gpus: float | None = None


@dataclass
class Command:
    """A kind of trial: ``train`` or ``simulate``."""

    name: str
    simulation: SimulationSettings = field(default_factory=SimulationSettings)

    @property
    def not_flags(self) -> tuple[str, ...]:
        """Options of the config that the command has no flag for."""
        return NOT_FLAGS[self.name]

    @property
    def config_type(self) -> type:
        return TrainRun if self.name == "train" else RunConfig

    def selection(self, config) -> str:
        """The validation figure a trial is judged by (NDCG@10; the click AUC for --task ctr)."""
        return task_of(config.data.task).selection

    def private(self, config) -> bool:
        return self.name == "simulate" and config.privacy.private

    def run(self, config, out: Path, report: Report, on_message: Callable[[str], None]) -> dict:
        """Run the trial into ``out``; its ``metrics.json`` as a dict."""
        if self.name == "train":
            return _train(config, out, report)
        return _simulate(config, out, report, self.simulation, on_message)


def _train(config: TrainRun, out: Path, report: Report) -> dict:
    chosen = task_of(config.data.task).selection

    def stop_rule(record: dict) -> str | None:
        valid = record.get("valid")
        return report(record["epoch"], valid[chosen]) if valid else None

    return train_centralized(config.data, config.model, config.train, out, stop_rule=stop_rule)


def _simulate(
    config: RunConfig, out: Path, report: Report, settings: SimulationSettings, on_message: Callable[[str], None]
) -> dict:
    chosen = task_of(config.data.task).selection

    def stop_rule(record: dict) -> str | None:
        valid = record.get("valid")
        return report(record["round"], valid[chosen]) if valid else None

    if out.exists():
        raise UserError(f"{out}: a trial's run folder exists already (a trial number is never reused)")
    results, _ = simulate(
        config,
        out=out,
        client_cpus=settings.client_cpus,
        client_gpus=settings.client_gpus,
        progress=Progress(on_message=lambda text: None, stop_rule=stop_rule),
    )
    return results
