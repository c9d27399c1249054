"""What a study leaves: ``study.json`` (every trial: options, outcome, run folder, reason), and for the best trial
``best.toml`` (a config file ``train --config`` / ``simulate --config`` accept) and the exact command line that
reproduces it."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna

from fedseqrec.jsonio import dumps
from fedseqrec.options import declared, excluded, to_argv, toml_table, with_values
from fedseqrec.tuning.trials import Command

TRIAL_FIGURES = ("valid", "test", "noised_score", "seconds", "failed", "run_folder")
PRIVACY_WORDS = {
    None: "no privacy: the trials are not private runs",
    "accounted": "accounted: every trial's score was released with noise and the number of trials was random "
    "(Papernot & Steinke 2022); the search's ε is in privacy_search.json",
    "clear": "NOT covered: the trials' validation figures were read in the clear, and the choice of the best of "
    "them spends privacy that no ledger records (--tuning-privacy clear)",
    "proxy": "tuned on data declared public (--tuning-privacy proxy): the choice costs the private users nothing "
    "only if this data is a public proxy, not theirs; apply the best options to the private data in a new run",
}


def config_of(command: Command, base, trial: optuna.trial.FrozenTrial):
    return with_values(base, trial.params)


def command_line(command: Command, config, out: str) -> str:
    """``fedseqrec train|simulate`` with the flags that rebuild ``config`` (every option away from its default)."""
    argv = ["fedseqrec", command.name, *to_argv(config, exclude=command.not_flags), "--out", out]
    return shlex.join(argv)


def config_file(command: Command, config) -> str:
    """Every option of ``config`` as ``key = value`` lines (unset: ``""``), for ``--config FILE``."""
    values = {
        d.key: ("" if d.default is None else d.default) for d in declared(config) if not excluded(d, command.not_flags)
    }
    return "\n".join(["# written by fedseqrec tune: the best trial's options", *toml_table(values)]) + "\n"


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict:
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "value": trial.value,
        "last_step": trial.last_step,
        **{k: trial.user_attrs[k] for k in TRIAL_FIGURES if k in trial.user_attrs},
    }


def write_summary(
    out: Path, study: optuna.Study, command: Command, base, privacy: str | None, ledger: dict | None
) -> dict:
    trials = [trial_summary(t) for t in study.get_trials(deepcopy=False)]
    summary: dict = {
        "study": study.study_name,
        "command": command.name,
        "search_privacy": PRIVACY_WORDS[privacy],
        "trials": trials,
    }
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        config = config_of(command, base, best)
        line = command_line(command, config, f"runs/{command.name}-tuned")
        (out / "best.toml").write_text(config_file(command, config))
        (out / "best.txt").write_text(line + "\n")
        summary["best"] = {**trial_summary(best), "command": line, "config_file": str((out / "best.toml").resolve())}
    if ledger is not None:
        summary["privacy"] = {k: v for k, v in ledger.items() if k != "trials"}
    tmp = out / ".study.json.tmp"
    tmp.write_text(dumps(summary, indent=2) + "\n")
    tmp.replace(out / "study.json")
    return summary
