"""``fedseqrec tune``: one request (the command's options and the search's), planned and run as a study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

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
    study: StudySettings
    search: list[str] = field(default_factory=list)
    enqueue: list[str] = field(default_factory=list)
    tuning_privacy: str | None = "accounted"
    trials_eta: float = 0.0
    score_noise: float = 3.0
    simulation: SimulationSettings = field(default_factory=SimulationSettings)


def tune(
    request: TuneRequest, on_line: Callable[[str], None] = print, on_open: Callable[[], None] | None = None
) -> dict:
    """Run (or continue) the study; its summary (``study.json``). ``on_open``: called once the study is in its
    storage (other workers may join it from then on)."""
    command = Command(request.command, request.simulation)
    privacy = request.tuning_privacy if command.private(request.base) else None
    accounted = privacy == "accounted"
    default = default_search(command.name, request.base)
    dims = search_space(request.base, request.search, default, exclude=command.not_flags)
    settings = replace(request.study, search=_private_search(request, accounted, dims))
    identity = {
        "command": command.name,
        "fixed": {d.key: d.default for d in declared(request.base) if d.key not in {x.key for x in dims}},
        "space": {d.key: d.space.describe() for d in dims},
        "tuning_privacy": privacy,
    }
    study = open_study(settings, dims, identity)
    for text in request.enqueue if settings.worker == 0 and not study.get_trials(deepcopy=False) else []:
        study.enqueue_trial(_values(text, dims), skip_if_exists=True)
    if on_open is not None:
        on_open()
    if accounted:
        on_line(
            f"accounted private search: {settings.search.trials} trials (drawn from a truncated negative binomial "
            f"of mean {settings.trials:g}), validation scores noised with σ = {settings.search.score_noise:g}"
        )
    Study(command, request.base, dims, settings, on_line).run(study)
    ledger = private_ledger(study, settings)
    return write_summary(settings.out, study, command, request.base, privacy, ledger)


def _private_search(request: TuneRequest, accounted: bool, dims: list[Dimension]) -> PrivateSearch | None:
    """The settings of an accounted search (K drawn; a stored study keeps its own), after what it refuses."""
    trials = request.study.trials
    if trials < 1 or (not accounted and trials != int(trials)):
        raise UserError(f"--trials must be a whole number of at least 1, got {trials:g}")
    if not accounted:
        return None
    check_searchable([d.key for d in dims])
    if request.study.timeout is not None:
        raise UserError(
            "--timeout: an accounted private search runs the number of trials it drew (a time limit would cut "
            "it by how long private trials take); interrupt it and run the same command to continue instead"
        )
    if request.base.privacy.released != LAST:
        raise UserError(
            "--release best-validation picks a round on validation items read in the clear: an accounted "
            "private search releases each trial's last round"
        )
    return PrivateSearch.draw(trials, request.trials_eta, request.score_noise)


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
