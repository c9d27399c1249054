"""A study: Optuna's, in a database (SQLite in the tune folder unless ``--storage``), over trials that are ordinary
run folders (``TUNE_DIR/trials/trial-NNNN``). Running the same command again continues the study; several worker
processes or machines given the same storage and study name share it. A trial that fails or is refused is
recorded as failed, with its reason, and the study goes on."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from fedseqrec.errors import RunError, UserError
from fedseqrec.options import check, with_values
from fedseqrec.tuning.private import (
    PrivateSearch,
    noised_score,
    search_ledger,
    trial_ledger,
    write_search_ledger,
)
from fedseqrec.tuning.space import Dimension
from fedseqrec.tuning.trials import Command

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
SAMPLERS = ("auto", "tpe", "grid", "random")
PRUNERS = ("auto", "median", "none")
HEARTBEAT_SECONDS, GRACE_SECONDS = 20, 60  # a trial whose worker was killed is failed (and retried) after this


@dataclass
class StudySettings:
    out: Path
    trials: float  # an accounted private search: their mean
    timeout: float | None = None
    sampler: str = "auto"
    pruner: str = "auto"
    startup_trials: int = 10
    prune_after: int = 30  # epochs or rounds a trial runs before it may be pruned
    grid_points: int = 3
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0
    worker: int = 0
    search: PrivateSearch | None = None  # an accounted private search (drawn once; the stored one wins)

    def __post_init__(self):
        for flag, value, least in (
            ("--startup-trials", self.startup_trials, 0),
            ("--prune-after", self.prune_after, 1),
            ("--grid-points", self.grid_points, 1),
        ):
            if value < least:
                raise UserError(f"{flag} must be at least {least}, got {value}")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or self.out.resolve().name


def open_study(settings: StudySettings, dims: list[Dimension], identity: dict) -> optuna.Study:
    """The study, made or continued; ``identity``: what makes it this study (command, fixed options, space) —
    a stored study made by another command is refused."""
    settings.out.mkdir(parents=True, exist_ok=True)
    # A trial of a private search is never retried: it has spent its privacy, and the number of trials is drawn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # (heartbeats: "experimental")
        retry = None if settings.search else optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        storage = optuna.storages.RDBStorage(
            settings.storage_url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=retry,
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=settings.name,
        storage=storage,
        direction="maximize",
        sampler=_sampler(settings, dims),
        pruner=_pruner(settings),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        if settings.search is not None:
            study.set_user_attr("private_search", settings.search.to_dict())
    elif stored != identity:
        changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        raise UserError(
            f"study {settings.name} in {settings.storage_url} was made by another command (its {', '.join(changed)} "
            "differ): give the same command to continue it, or another --out / --study-name"
        )
    if "private_search" in study.user_attrs:  # the K drawn when the study was made, never redrawn
        settings.search = PrivateSearch(**study.user_attrs["private_search"])
    _watch_running_trials(study, storage)
    return study


def _watch_running_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Give every running trial a heartbeat. Optuna fails (and retries) a trial whose heartbeat went stale, but
    never one that has none: a worker killed between asking for a trial and its first heartbeat would leave it
    running for ever. A live worker's own heartbeats go on; an orphan's goes stale after the grace period, and the
    next trial any worker starts fails it. Trials already stale are failed first, not given more time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.record_heartbeat(trial._trial_id)  # (FrozenTrial keeps the storage's id private)


def _sampler(settings: StudySettings, dims: list[Dimension]):
    seed = settings.seed + 1000 * settings.worker  # (workers draw different first trials)
    name = settings.sampler
    if settings.search is not None:
        if name not in ("auto", "random"):
            raise UserError(
                f"--sampler {name}: an accounted private search draws each trial's options independently at random "
                "(the theorem it rests on covers no choice made from earlier scores): use --sampler random"
            )
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({d.key: d.grid(settings.grid_points) for d in dims}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials, multivariate=True)


def _pruner(settings: StudySettings):
    if settings.search is not None:
        if settings.pruner == "median":
            raise UserError(
                "--pruner median: pruning reads every trial's validation figures as it trains; an accounted "
                "private search reads one noised score per trial: use --pruner none"
            )
        return optuna.pruners.NopPruner()
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    # Not before --prune-after epochs or rounds: an early figure says little of where a run ends (on ml-100k, the
    # configurations that end best start slowest; benchmark-notes.md, issue 31).
    return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=settings.prune_after)


def budget(settings: StudySettings, dims: list[Dimension]) -> int:
    """The number of trials the study runs in all: --trials, the grid's size, or the K of a private search."""
    if settings.search is not None:
        return settings.search.trials
    if settings.sampler == "grid":
        return min(int(settings.trials), math.prod(len(d.grid(settings.grid_points)) for d in dims))
    return int(settings.trials)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials the budget counts: completed, pruned, or failed for a reason of their own — not one that was
    interrupted, or whose worker died (it is run again)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.state != optuna.trial.TrialState.FAIL or "failed" in t.user_attrs
    ]


@dataclass
class Study:
    """Runs trials of ``command`` over ``base`` (the config the command line gave) until the budget is spent."""

    command: Command
    base: object
    dims: list[Dimension]
    settings: StudySettings
    on_line: Callable[[str], None]

    def run(self, study: optuna.Study) -> None:
        total = budget(self.settings, self.dims)
        left = total - len(finished(study))
        if left <= 0:
            self.on_line(f"study {self.settings.name}: its {total} trials are done")
            return

        def stop_at_budget(study: optuna.Study, trial) -> None:
            if len(finished(study)) >= total:
                study.stop()

        study.optimize(
            self.objective,
            n_trials=left,
            timeout=self.settings.timeout,
            catch=(Exception,),
            callbacks=[stop_at_budget, self._line],
            gc_after_trial=True,
        )

    def objective(self, trial: optuna.Trial) -> float:
        values = {d.key: d.suggest(trial) for d in self.dims}
        folder = self.settings.out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_folder", str(folder.resolve()))
        start = time.perf_counter()
        try:
            config = with_values(self.base, values)
            check(config)
            results = self.command.run(config, folder, self._reporter(trial), self.on_line)
        except Exception as err:  # recorded, and the study goes on (optimize's catch)
            ours = isinstance(err, UserError | RunError)
            trial.set_user_attr("failed", str(err) if ours else f"{type(err).__name__}: {err}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        selection = self.command.selection(config)
        trial.set_user_attr("valid", results["valid"])
        trial.set_user_attr("test", results["test"])
        if results.get("stopped") and results["stopped"].startswith(PRUNED_WORDS):
            raise optuna.TrialPruned(results["stopped"])
        if self.settings.search is not None:
            return self._private_score(trial, folder, selection)
        return float(results["valid"][selection])

    def _reporter(self, trial: optuna.Trial):
        def report(step: int, value: float) -> str | None:
            if self.settings.search is not None:
                return None
            trial.report(value, step)
            if trial.should_prune():
                return f"{PRUNED_WORDS} at step {step} (validation {value:.4f} below the median of earlier trials)"
            return None

        return report

    def _private_score(self, trial: optuna.Trial, folder: Path, selection: str) -> float:
        ledger = trial_ledger(folder)
        released = noised_score(folder, self.settings.search.score_noise, selection)
        trial.set_user_attr("privacy", {**ledger, "score_record": released["record"]})
        trial.set_user_attr("noised_score", released["score"])
        return released["score"]

    def _line(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.on_line(trial_line(study, trial))


PRUNED_WORDS = "pruned by the study"


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """One line per trial: its options, its outcome and the best so far."""
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    seconds = trial.user_attrs.get("seconds", 0.0)
    state = trial.state
    if state == optuna.trial.TrialState.COMPLETE:
        outcome = f"{'noised valid' if 'noised_score' in trial.user_attrs else 'valid'} {trial.value:.4f}"
    elif state == optuna.trial.TrialState.PRUNED:
        outcome = f"pruned at step {trial.last_step}"
    else:
        outcome = f"failed: {trial.user_attrs.get('failed', 'no reason recorded')}"
    try:
        best = study.best_trial
        so_far = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        so_far = "no trial completed yet"
    return f"trial {trial.number:>3}: {shown}  {outcome}  [{seconds:.0f} s; {so_far}]"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def private_ledger(study: optuna.Study, settings: StudySettings) -> dict | None:
    """The search ledger of an accounted private search (written beside the study), or None."""
    if settings.search is None:
        return None
    trials = []
    for trial in finished(study):
        privacy = trial.user_attrs.get("privacy")
        if privacy is not None:
            trials.append({"trial": trial.number, **privacy, "noised_score": trial.user_attrs.get("noised_score")})
    ledger = search_ledger(settings.search, trials)
    write_search_ledger(settings.out, ledger)
    return ledger
