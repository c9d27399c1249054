"""A search over private runs, accounted (Papernot & Steinke 2022; the maths in :mod:`fedseqrec.privacy.tuning`).

Each trial's score is the released model's validation NDCG@10 summed over users (each adds at most 1), plus
Gaussian noise, divided by the number of users: the only thing the search reads of the validation items. The
number of trials is drawn once, when the study is made, and kept in the study. The search ledger
(``privacy_search.json``) holds each trial's training records, the score's record, and the composed ε of the search.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedseqrec.data.dataset import load_dataset
from fedseqrec.errors import UserError
from fedseqrec.evaluation.evaluator import evaluate_sums
from fedseqrec.jsonio import dumps
from fedseqrec.models.checkpoint import load_checkpoint
from fedseqrec.privacy.local_dpsgd import records_of
from fedseqrec.privacy.tuning import (
    draw_trials,
    epsilon_of_rdp,
    expected_trials,
    gamma_for,
    noised_mean,
    rdp_of,
    score_record,
    search_rdp,
)
from fedseqrec.results.folder import recorded_run

# Options that change what a trial's ledger holds: a private search keeps them fixed, so that every trial is the
# same mechanism (the theorem bounds the search by one trial's RDP).
PRIVACY_SHAPING = (
    "mechanism",
    "epsilon",
    "noise-multiplier",
    "central-noise",
    "delta",
    "horizon",
    "budget",
    "accountant",
    "rounds",
    "clients-per-round",
    "users-per-round",
    "public-users",
    "item-rows",
    "selection-noise",
    "partition",
    "clients",
    "seed",
    "data",
)
PRIVACY_CHOICES = ("accounted", "clear", "proxy")


@dataclass(frozen=True)
class PrivateSearch:
    """The settings of an accounted search, fixed when the study is made."""

    mean_trials: float
    eta: float
    gamma: float
    trials: int  # K, drawn once
    score_noise: float  # σ of the noised validation score (its sensitivity is 1)

    @classmethod
    def draw(cls, mean_trials: float, eta: float, score_noise: float, rng=None) -> PrivateSearch:
        if not eta >= 0:
            raise UserError(f"--trials-eta must be >= 0 (0: logarithmic, 1: geometric), got {eta:g}")
        if not score_noise > 0:
            raise UserError(f"--score-noise must be positive, got {score_noise:g}")
        gamma = gamma_for(mean_trials, eta)
        return cls(mean_trials, eta, gamma, draw_trials(eta, gamma, rng), score_noise)

    def to_dict(self) -> dict:
        return asdict(self)


def check_searchable(keys: list[str]) -> None:
    shaping = [k for k in keys if k in PRIVACY_SHAPING]
    if shaping:
        raise UserError(
            f"--search {', '.join(shaping)}: an accounted private search keeps what the privacy ledger depends on "
            "fixed (every trial must be the same mechanism); search the others, or tune on a public proxy "
            "(--tuning-privacy proxy)"
        )


def noised_score(folder: Path, noise_multiplier: float, selection: str) -> dict:
    """The released model's validation figure, noised: the trial's only read of the validation items."""
    cfg = recorded_run(folder)
    if cfg.evaluation.mode == "federated":
        raise UserError("an accounted private search scores trials at the server: not with --mode federated")
    ds = load_dataset(cfg.data)
    _, model = load_checkpoint(folder, ds.sequences)
    sums = evaluate_sums(model, ds.sequences, ds.split, "valid", max_len=model.cfg.max_len)
    if sums.count > ds.sequences.n_users:
        raise UserError("an accounted private search needs one validation target per user (leave-one-out split)")
    return {
        "score": noised_mean(sums.sums[selection], sums.count, noise_multiplier),
        "users": sums.count,
        "record": list(score_record(noise_multiplier)),
    }


def trial_ledger(folder: Path) -> dict:
    """The trial's privacy records: the entry (client or silo) with the largest ε bounds every user's."""
    privacy = _read(folder / "privacy_report.json")
    worst = max(privacy["clients"], key=lambda c: c["epsilon"])
    return {"records": [list(r) for r in records_of(worst)], "delta": worst["delta"], "epsilon": worst["epsilon"]}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); the trial's privacy cannot be accounted") from err


def search_ledger(search: PrivateSearch, trials: list[dict]) -> dict:
    """The search's privacy: one trial's RDP (training and score, the largest over the trials run, order by
    order) bounded for the whole search, at the trials' δ."""
    if not trials:
        return {"search": search.to_dict(), "trials": [], "epsilon": 0.0}
    delta = max(t["delta"] for t in trials)
    training = np.max([rdp_of(tuple(r) for r in t["records"]) for t in trials], axis=0)
    trial_rdp = training + rdp_of([score_record(search.score_noise)])
    searched = search_rdp(trial_rdp, search.eta, search.gamma)
    single = epsilon_of_rdp(training, delta)
    total = epsilon_of_rdp(searched, delta)
    return {
        "search": search.to_dict(),
        "expected_trials": expected_trials(search.eta, search.gamma),
        "delta": delta,
        "single_run_epsilon": single,
        "trial_epsilon": epsilon_of_rdp(trial_rdp, delta),
        "epsilon": total,
        "ratio_to_single_run": total / single if single > 0 and math.isfinite(single) else None,
        "same_mechanism_in_every_trial": all(t["records"] == trials[0]["records"] for t in trials),
        "trials": trials,
    }


def write_search_ledger(out: Path, ledger: dict) -> None:
    tmp = out / ".privacy_search.json.tmp"
    tmp.write_text(dumps(ledger, indent=2) + "\n")
    tmp.replace(out / "privacy_search.json")
