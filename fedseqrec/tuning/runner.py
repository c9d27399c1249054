"""``fedseqrec tune``: one request (the command's options and the search's), planned and run as a study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedseqrec.errors import UserError
from fedseqrec.options import declared
from fedseqrec.privacy.config import LAST
from fedseqrec.tuning.best import write_summary
from fedseqrec.tuning.private import PrivateSearch, check_searchable
from fedseqrec.tuning.space import Dimension, default_search, search_space
from fedseqrec.tuning.study import Study, StudySettings, open_study, private_ledger
from fedseqrec.tuning.trials import Command, SimulationSettings


@dataclass
class TuneRequest:
    command: str  # train | simulate
    base: object  # the command's config, as its flags gave it
    out: Path
    trials: float = 20
    search: list[str] = field(default_factory=list)
    enqueue: list[str] = field(default_factory=list)
    timeout: float | None = None
    sampler: str = "auto"
    pruner: str = "auto"
    startup_trials: int = 5
    grid_points: int = 3
    storage: str | None = None
    study_name: str | None = None
    sampler_seed: int = 0
    worker: int = 0
    tuning_privacy: str | None = "accounted"
    trials_eta: float = 0.0
    score_noise: float = 3.0
    client_cpus: float = 1.0
    client_gpus: float | None = None


def tune(
    request: TuneRequest, on_line: Callable[[str], None] = print, on_open: Callable[[], None] | None = None
) -> dict:
    """Run (or continue) the study; its summary (``study.json``). ``on_open``: called once the study is in its
    storage (other workers may join it from then on)."""
    command = Command(request.command, SimulationSettings(request.client_cpus, request.client_gpus))
    privacy = request.tuning_privacy if command.private(request.base) else None
    accounted = privacy == "accounted"
    default = default_search(command.name, request.base)
    dims = search_space(request.base, request.search, default, exclude=command.not_flags)
    settings = _settings(request, accounted, dims)
    identity = {
        "command": command.name,
        "fixed": {d.key: d.default for d in declared(request.base) if d.key not in {x.key for x in dims}},
        "space": {d.key: d.space.describe() for d in dims},
        "tuning_privacy": privacy,
    }
    study = open_study(settings, dims, identity)
    for text in request.enqueue if request.worker == 0 and not study.get_trials(deepcopy=False) else []:
        study.enqueue_trial(_values(text, dims), skip_if_exists=True)
    if on_open is not None:
        on_open()
    if accounted:
        on_line(
            f"accounted private search: {settings.search.trials} trials (drawn from a truncated negative binomial "
            f"of mean {request.trials:g}), validation scores noised with σ = {settings.search.score_noise:g}"
        )
    Study(command, request.base, dims, settings, on_line).run(study)
    ledger = private_ledger(study, settings)
    return write_summary(settings.out, study, command, request.base, privacy, ledger)


def _settings(request: TuneRequest, accounted: bool, dims: list[Dimension]) -> StudySettings:
    if request.trials < 1 or (not accounted and request.trials != int(request.trials)):
        raise UserError(f"--trials must be a whole number of at least 1, got {request.trials:g}")
    search = None
    if accounted:
        check_searchable([d.key for d in dims])
        if request.timeout is not None:
            raise UserError(
                "--timeout: an accounted private search runs the number of trials it drew (a time limit would cut "
                "it by how long private trials take); interrupt it and run the same command to continue instead"
            )
        if request.base.privacy.released != LAST:
            raise UserError(
                "--release best-validation picks a round on validation items read in the clear: an accounted "
                "private search releases each trial's last round"
            )
        search = PrivateSearch.draw(request.trials, request.trials_eta, request.score_noise)
    return StudySettings(
        out=request.out,
        trials=int(request.trials),
        timeout=request.timeout,
        sampler=request.sampler,
        pruner=request.pruner,
        startup_trials=request.startup_trials,
        grid_points=request.grid_points,
        storage=request.storage,
        study_name=request.study_name,
        seed=request.sampler_seed,
        worker=request.worker,
        privacy=request.tuning_privacy,
        search=search,
    )


def _values(text: str, dims: list[Dimension]) -> dict:
    """``KEY=VALUE,KEY=VALUE`` of ``--enqueue``, typed as the searched options are."""
    by_key = {d.key: d for d in dims}
    values = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in by_key:
            raise UserError(f"--enqueue {text}: {key or item!r} is not a searched option ({', '.join(by_key)})")
        kind = by_key[key].kind
        try:
            values[key] = (value.lower() == "true") if kind is bool else kind(value)
        except ValueError as err:
            raise UserError(f"--enqueue {text}: {key} = {value!r} is not a {kind.__name__}") from err
    return values
