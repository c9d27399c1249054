"""`fedseqrec tune`: search spaces from the declarations, a study that runs, resumes, prunes and records failures,
and a best trial whose command line and config file reproduce its figures exactly."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest

from fedseqrec.cli import build_parser
from fedseqrec.federated.config import RunConfig
from fedseqrec.options import Space, declared, from_args, to_argv, with_values
from fedseqrec.tuning.space import default_search, parse_space, search_space
from fedseqrec.tuning.trials import NOT_FLAGS, TrainRun

SMALL = ["--shop-users", "300", "--shop-items", "200", "--hidden", "16", "--heads", "1", "--inner", "32"]
TRAIN = ["tune", "train", *SMALL, "--epochs", "3"]


def _study(folder):
    return json.loads((folder / "study.json").read_text())


# --- the search space -----------------------------------------------------------------------------------------------


def test_declared_ranges_and_ranges_given_on_the_command_line():
    dims = {d.key: d for d in search_space(TrainRun(), ["lr", "dropout=0.1:0.3", "hidden=16,32"], ())}
    assert dims["lr"].space == Space(1e-4, 1e-2, log=True)  # declared beside the option
    assert dims["dropout"].space == Space(0.1, 0.3)
    assert dims["hidden"].space.values == (16, 32) and all(isinstance(v, int) for v in dims["hidden"].space.values)
    assert dims["lr"].grid(3) == pytest.approx([1e-4, 1e-3, 1e-2])  # log-spaced
    assert dims["dropout"].grid(3) == pytest.approx([0.1, 0.2, 0.3])
    layers = search_space(TrainRun(), ["layers=1:3"], ())[0]
    assert layers.grid(5) == [1, 2, 3]  # distinct integers


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (["learning-rate"], "no option learning-rate"),
        (["lr", "lr"], "twice"),
        (["heads"], "declares no range"),
        (["dropout=0.5:0.1"], "low < high"),
        (["lr=0:1:log"], "must be positive"),
        (["tie-items=1:2"], "true,false"),
        (["lr=1:2:lin"], "LOW:HIGH:log"),
    ],
)
def test_a_bad_search_is_refused_with_its_reason(given, words):
    from fedseqrec.errors import UserError

    with pytest.raises((UserError, ValueError), match=words):
        search_space(TrainRun(), given, ())


def test_the_default_search_follows_the_run():
    assert default_search("train", TrainRun()) == ("lr", "weight-decay", "dropout", "label-smoothing")
    private = with_values(RunConfig(), {"privacy": "user-level", "strategy": "fedadam"})
    assert default_search("simulate", private) == ("max-grad-norm", "server-lr", "dropout")
    assert default_search("simulate", with_values(RunConfig(), {"privacy": "dp-sgd"}))[1] == "max-grad-norm"


def test_a_range_is_typed_as_its_option():
    option = next(d for d in declared(TrainRun()) if d.key == "layers")
    assert parse_space("1:4", option) == Space(1, 4.0)


@pytest.mark.parametrize("config", [TrainRun(), RunConfig()])
def test_flags_rebuild_a_config_exactly(config):
    changed = with_values(config, {"lr": 0.000123456789, "tie-items": True, "side-info": False, "dropout": 0.25})
    command = "train" if isinstance(config, TrainRun) else "simulate"
    argv = to_argv(changed, exclude=NOT_FLAGS[command])
    assert "--no-side-info" in argv and "--tie-items" in argv and "0.000123456789" in argv
    args = build_parser().parse_args([command, *argv])
    assert from_args(type(config)(), args, exclude=NOT_FLAGS[command]) == changed


# --- --config FILE ----------------------------------------------------------------------------------------------------


def test_a_config_file_sets_options_and_flags_win(cli, tmp_path):
    config = tmp_path / "best.toml"
    config.write_text('lr = 0.004\ndropout = 0.3\ntie-items = true\nside-info = false\nmin-rating = ""\n')
    argv = ["train", "--config", str(config), "--dropout", "0.2"]
    from fedseqrec.cli.common import with_config_file

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    args = with_config_file(parser, args, argv)
    assert (args.lr, args.dropout, args.tie_items, args.side_info, args.min_rating) == (0.004, 0.2, True, False, None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("drop-out = 0.1\n", "drop-out is not an option of this command; did you mean dropout?"),
        ('lr = "fast"\n', "expected float"),
        ("epochs = 2.5\n", "expected int"),
        ('model = "transformer"\n', "expected one of"),
        ("tie-items = 1\n", "expected true or false"),
        ("lr = \n", "not TOML"),
        ('partition = "iid"\n', "partition is not an option of this command"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(cli, tmp_path, text, words):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.code == 2 and words in result.err and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


# --- studies ----------------------------------------------------------------------------------------------------------


def test_a_study_runs_and_its_best_command_reproduces_the_best_trial(cli, tmp_path, monkeypatch):
    out = tmp_path / "tune"
    result = cli(*TRAIN, "--trials", "3", "--pruner", "none", "--search", "lr", "--search", "dropout", "--out", out)
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all("best " in line for line in lines)
    study = _study(out)
    assert [t["state"] for t in study["trials"]] == ["complete"] * 3
    for trial in study["trials"]:  # each an ordinary run folder
        assert (tmp_path / trial["run_folder"] / "metrics.json").is_file()
        assert (tmp_path / trial["run_folder"] / "model.pt").is_file()
    best = study["best"]
    assert best["value"] == max(t["value"] for t in study["trials"])
    line = shlex.split((out / "best.txt").read_text())
    assert line[:2] == ["fedseqrec", "train"] and best["command"] == (out / "best.txt").read_text().strip()
    line[line.index("--out") + 1] = str(tmp_path / "again")
    assert cli(*line[1:]).code == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test"] == best["test"] and again["valid"]["NDCG@10"] == best["value"]  # exactly
    assert cli("train", "--config", out / "best.toml", "--out", tmp_path / "from-file").code == 0
    assert json.loads((tmp_path / "from-file" / "metrics.json").read_text())["test"] == best["test"]
    evaluated = cli("evaluate", "--checkpoint", best["run_folder"], "--json")
    assert json.loads(evaluated.out)["test"] == best["test"]


def test_the_same_command_continues_the_study_and_another_is_refused(cli, tmp_path):
    out = tmp_path / "tune"
    args = [*TRAIN, "--search", "lr", "--pruner", "none", "--out", out]
    assert cli(*args, "--trials", "2").code == 0
    assert cli(*args, "--trials", "3").code == 0
    assert [t["trial"] for t in _study(out)["trials"]] == [0, 1, 2]
    done = cli(*args, "--trials", "3")
    assert done.code == 0 and "its 3 trials are done" in done.out
    other = cli(*TRAIN, "--search", "dropout", "--out", out, "--trials", "4")
    assert other.code == 2 and "was made by another command" in other.err and "space" in other.err


def test_a_planted_bad_trial_is_pruned(cli, tmp_path):
    out = tmp_path / "tune"
    good = "lr=0.005"
    result = cli(
        *TRAIN, "--search", "lr", "--trials", "3", "--startup-trials", "2", "--prune-after", "1", "--sampler", "random",
        "--enqueue", good, "--enqueue", "lr=0.0049", "--enqueue", "lr=0.0001", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    states = [(t["params"]["lr"], t["state"]) for t in _study(out)["trials"]]
    assert states == [(0.005, "complete"), (0.0049, "complete"), (0.0001, "pruned")]
    pruned = _study(out)["trials"][2]
    assert pruned["last_step"] == 1  # stopped after its first epoch, and its run folder is whole
    metrics = json.loads((tmp_path / pruned["run_folder"] / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["stopped"].startswith("pruned by the study")


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(cli, tmp_path):
    out = tmp_path / "tune"
    result = cli(*TRAIN, "--search", "heads=1,3", "--trials", "2", "--enqueue", "heads=3", "--enqueue", "heads=1",
                 "--out", out)  # fmt: skip
    assert result.code == 0
    first, second = _study(out)["trials"]
    assert first["state"] == "fail" and "divisible by --heads 3" in first["failed"]
    assert "failed: --hidden 16 must be divisible" in result.out
    assert second["state"] == "complete" and _study(out)["best"]["trial"] == 1


def test_grid_search_tries_every_point_once(cli, tmp_path):
    out = tmp_path / "tune"
    result = cli(*TRAIN, "--sampler", "grid", "--search", "hidden=8,16", "--search", "dropout=0.1,0.3",
                 "--trials", "50", "--pruner", "none", "--out", out)  # fmt: skip
    assert result.code == 0
    points = sorted((t["params"]["hidden"], t["params"]["dropout"]) for t in _study(out)["trials"])
    assert points == [(8, 0.1), (8, 0.3), (16, 0.1), (16, 0.3)]


@pytest.mark.slow
def test_an_interrupted_study_resumes_from_its_database(tmp_path):
    out = tmp_path / "tune"
    argv = [sys.executable, "-m", "fedseqrec.cli", *TRAIN, "--epochs", "80", "--patience", "80", "--search", "lr",
            "--pruner", "none", "--trials", "3", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal sends it, even where this test runs in a background job (which ignores SIGINT, and a
    # Python started with SIGINT ignored never raises KeyboardInterrupt)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=default_sigint
    )
    for line in process.stdout:  # (a warning on stderr may share the line)
        if "trial   0" in line:
            break
    else:
        pytest.fail("the study ended without printing trial 0's line")
    second = out / "trials" / "trial-0001" / "metrics.jsonl"  # interrupted once its second trial has an epoch
    deadline = time.monotonic() + 60
    while not (second.exists() and second.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    storage = f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]  # the interrupted one is not counted
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "trial   2" in done.stdout and "trial   3" in done.stdout


@pytest.mark.slow
def test_two_workers_share_one_study(cli, tmp_path):
    out = tmp_path / "tune"
    result = cli(*TRAIN, "--search", "lr", "--pruner", "none", "--trials", "4", "--jobs", "2", "--out", out)
    assert result.code == 0, result.err
    trials = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert len(trials) >= 4 and sum(t.state.name == "COMPLETE" for t in trials) >= 4
    assert len({t.params["lr"] for t in trials}) == len(trials)  # the workers' samplers differ


@pytest.mark.slow
def test_a_trial_whose_worker_was_killed_is_run_again(tmp_path):
    from fedseqrec.tuning.study import GRACE_SECONDS

    out = tmp_path / "tune"
    argv = [sys.executable, "-m", "fedseqrec.cli", *TRAIN, "--epochs", "200", "--patience", "200", "--search", "lr",
            "--pruner", "none", "--trials", "1", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.monotonic() + 240  # a busy machine takes its time to import and load the data
    running = False
    # Killed once its trial is running and has sent its first heartbeat: Optuna fails (and retries) a trial whose
    # heartbeat went stale, and ignores one killed in the instant between its start and its first heartbeat.
    while not running and time.monotonic() < deadline:
        time.sleep(1)
        running = _has_heartbeat(out / "study.db")
    process.kill()
    assert running, "the study's first trial was not running with a heartbeat within 240 s"
    process.wait()
    killed = optuna.load_study(study_name="tune", storage=storage).get_trials()[0]
    assert killed.state.name == "RUNNING"  # as the database last heard of it
    time.sleep(GRACE_SECONDS + 5)  # its heartbeat goes stale
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # the same command again
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="tune", storage=storage).get_trials()
    assert trials[0].state.name == "FAIL" and "failed" not in trials[0].user_attrs  # not counted
    assert trials[1].params == killed.params and trials[1].state.name == "COMPLETE"  # run again


def test_a_trial_left_running_without_a_heartbeat_is_failed_and_retried(tmp_path, monkeypatch):
    """A worker killed between Optuna's ask and its first heartbeat leaves a running trial with none, which Optuna
    alone would never fail: opening the study gives it one, so it goes stale and is retried like any other."""
    from fedseqrec.tuning import study as study_module

    monkeypatch.setattr(study_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(study_module, "GRACE_SECONDS", 1)
    settings = study_module.StudySettings(out=tmp_path / "tune", trials=2, sampler="random")
    first = study_module.open_study(settings, [], {"command": "train"})
    orphan = first.ask()
    orphan.suggest_float("lr", 1e-4, 1e-2, log=True)  # (the worker dies here, before its first heartbeat)
    assert not _has_heartbeat(tmp_path / "tune" / "study.db")
    study = study_module.open_study(settings, [], {"command": "train"})  # another worker, or the command again
    assert _has_heartbeat(tmp_path / "tune" / "study.db")
    time.sleep(2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # what Optuna does before each trial a worker starts
    trials = study.get_trials()
    assert trials[0].number == orphan.number and trials[0].state.name == "FAIL"
    assert trials[1].state.name == "WAITING" and trials[1].params == trials[0].params  # to be run again


def _has_heartbeat(database: Path) -> bool:
    """Whether the study's first trial is running and its worker has recorded a heartbeat (Optuna's table)."""
    import sqlite3

    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
            found = db.execute(
                "SELECT COUNT(*) FROM trials JOIN trial_heartbeats USING (trial_id) WHERE trials.state = 'RUNNING'"
            ).fetchone()
    except sqlite3.Error:  # (the study's tables are not made yet)
        return False
    return bool(found and found[0])
