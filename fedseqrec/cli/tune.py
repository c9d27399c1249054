"""``fedseqrec tune train|simulate``: a hyper-parameter search (Optuna) whose trials are ``train`` or ``simulate``
runs, with every flag of that command, and the search's own flags (``--trials``, ``--search``, ...)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from fedseqrec.centralized.config import TrainConfig
from fedseqrec.cli.common import add_command, add_config_option, add_data_options
from fedseqrec.cli.federate import add_run_options
from fedseqrec.errors import UserError
from fedseqrec.models.config import ModelConfig
from fedseqrec.options import add_options, check, from_args

TUNE_HELP = """hyper-parameter search (Optuna): trials of train or simulate, studies in a database

A study over `train` or `simulate` trials: TPE (Bayesian), grid or random sampling over the options --search
names (each with the range declared beside it, or one given), pruning on the per-epoch or per-round validation
figure, a trial and a time budget. See docs/how-to/tuning.md."""
GROUP = "tuning"


def cmd_tune(args: argparse.Namespace) -> int:
    # Optuna, torch and Flower: not for building the parsers
    from fedseqrec.tuning.runner import TuneRequest, tune
    from fedseqrec.tuning.study import StudySettings
    from fedseqrec.tuning.trials import Command, SimulationSettings

    kind = Command(args.tune_command)
    request = TuneRequest(
        command=args.tune_command,
        base=from_args(kind.config_type(), args, exclude=kind.not_flags),
        study=StudySettings(
            out=Path(args.out or f"runs/tune-{args.tune_command}-{args.model}"),
            trials=args.trials,
            timeout=args.timeout,
            sampler=args.sampler,
            pruner=args.pruner,
            startup_trials=args.startup_trials,
            prune_after=args.prune_after,
            grid_points=args.grid_points,
            storage=args.storage,
            study_name=args.study_name,
            seed=args.sampler_seed,
            worker=args.worker,
        ),
        search=args.search or [],
        enqueue=args.enqueue or [],
        tuning_privacy=args.tuning_privacy,
        trials_eta=args.trials_eta,
        score_noise=args.score_noise,
        simulation=SimulationSettings(getattr(args, "client_cpus", 1.0), getattr(args, "client_gpus", None)),
    )
    check(request.base)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    workers: list[subprocess.Popen] = []

    def start_workers() -> None:
        if not args.worker:
            workers.extend(_start_worker(args.argv, i) for i in range(1, args.jobs))

    try:
        summary = tune(request, on_line=lambda line: print(line, flush=True), on_open=start_workers)
    finally:
        for worker in workers:
            worker.wait()
    if args.worker:
        return 0
    best = summary.get("best")
    print()
    print(f"study {summary['study']}: {len(summary['trials'])} trials; tuning privacy: {summary['search_privacy']}")
    if summary.get("privacy"):
        p = summary["privacy"]
        print(
            f"privacy of the search: ε = {p['epsilon']:.3f} at δ = {p['delta']:.3g} over {p['search']['trials']} "
            f"trials (one run: ε = {p['single_run_epsilon']:.3f}; ×{p['ratio_to_single_run']:.2f})"
        )
    if best is None:
        print("no trial completed")
        return 1
    score = "noised validation score" if summary.get("privacy") else "valid"
    print(f"best: trial {best['trial']} ({score} {best['value']:.4f}), run folder {best['run_folder']}")
    print(f"reproduce it: {best['command']}")
    print(f"or: fedseqrec {args.tune_command} --config {best['config_file']}")
    return 0


def _start_worker(argv: list[str], index: int) -> subprocess.Popen:
    """Another process on the same study (``--jobs``): this command again, as worker ``index``."""
    return subprocess.Popen([sys.executable, "-m", "fedseqrec.cli", *argv, "--worker", str(index)])


def _add_tune_options(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group(GROUP)
    group.add_argument("--out", default=None, metavar="DIR", help=f"tune folder (default: runs/tune-{command}-MODEL)")
    group.add_argument(
        "--trials",
        type=float,
        default=20,
        help="trials in all, over every run of the command and every worker (an accounted private search: their "
        "mean, the number being random)",
    )
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop starting trials after this")
    group.add_argument(
        "--search",
        action="append",
        metavar="KEY[=LOW:HIGH[:log]|=A,B,C]",
        help="an option to search (repeat it), in its declared range or the one given (default: lr, weight-decay, "
        "dropout, and label-smoothing or local-epochs; a private run: its clipping norm, its step size (lr, or "
        "server-lr and user-lr under user-level) and dropout)",
    )
    group.add_argument(
        "--enqueue",
        action="append",
        metavar="KEY=VALUE,...",
        help="a trial to run first with these values (today's preset, say), before the sampler's",
    )
    group.add_argument("--sampler", default="auto", choices=("auto", "tpe", "grid", "random"), help="auto: tpe")
    group.add_argument("--grid-points", type=int, default=3, help="--sampler grid: values tried over each range")
    group.add_argument("--pruner", default="auto", choices=("auto", "median", "none"), help="auto: median")
    group.add_argument(
        "--startup-trials", type=int, default=10, help="trials completed before pruning (and TPE's model) starts"
    )
    group.add_argument(
        "--prune-after",
        type=int,
        default=30,
        metavar="STEPS",
        help="epochs (train) or rounds (simulate) a trial runs before it may be pruned (an early figure says little "
        "of where a run ends)",
    )
    group.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler")
    group.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage (default: sqlite:///TUNE_DIR/study.db); postgresql://... for several machines",
    )
    group.add_argument("--study-name", default=None, help="study name in the storage (default: the tune folder's)")
    group.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study")
    group.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    if command == "simulate":
        group.add_argument(
            "--tuning-privacy",
            default="accounted",
            choices=("accounted", "clear", "proxy"),
            help="private runs: accounted (noised scores, a random number of trials, the search's ε reported), "
            "clear (validation read in the clear: NOT covered), proxy (this data is a public proxy)",
        )
        group.add_argument(
            "--trials-eta",
            type=float,
            default=0.0,
            help="accounted search: η of the truncated negative binomial number of trials (0: logarithmic)",
        )
        group.add_argument(
            "--score-noise",
            type=float,
            default=3.0,
            help="accounted search: noise σ on the summed validation NDCG@10 (each user adds at most 1)",
        )
        sim = parser.add_argument_group("simulation")
        sim.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per simulated client")
        sim.add_argument("--client-gpus", type=float, default=None, help="share of a GPU per simulated client")
    else:
        parser.set_defaults(tuning_privacy=None, trials_eta=0.0, score_noise=3.0)


def register(commands: argparse._SubParsersAction) -> None:
    tune = add_command(commands, "tune", TUNE_HELP)
    kinds = tune.add_subparsers(dest="tune_command", metavar="COMMAND", required=True)
    train = add_command(kinds, "train", cmd_train_study)
    add_data_options(train, truncate=False, partition=False)
    add_options(train, ModelConfig())
    add_options(train, TrainConfig())
    add_config_option(train)
    _add_tune_options(train, "train")
    simulate = add_command(kinds, "simulate", cmd_simulate_study)
    add_run_options(simulate, exclude=("out",))
    _add_tune_options(simulate, "simulate")


def cmd_train_study(args: argparse.Namespace) -> int:
    """a study over `fedseqrec train` trials

    Each trial is a `fedseqrec train` run (every flag of train is accepted and fixed) with the searched options
    drawn by the sampler, into TUNE_DIR/trials/trial-NNNN; pruned on its per-epoch validation NDCG@10.
    """
    return cmd_tune(args)


def cmd_simulate_study(args: argparse.Namespace) -> int:
    """a study over `fedseqrec simulate` trials

    Each trial is a `fedseqrec simulate` run (every flag of simulate is accepted and fixed) with the searched
    options drawn by the sampler, into TUNE_DIR/trials/trial-NNNN; pruned on its per-round validation NDCG@10. A
    private run's search is accounted by default (see --tuning-privacy).
    """
    return cmd_tune(args)
