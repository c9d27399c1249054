"""``fedseqrec simulate`` and ``fedseqrec deploy``: a federated run on Flower's simulation or deployment engine.
Both take the run's options from :class:`fedseqrec.federated.config.RunConfig`, one flag per option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedseqrec.cli.common import add_command, add_config_option, unset_defaults
from fedseqrec.cli.report import run_audit
from fedseqrec.data.tasks import task_of
from fedseqrec.federated.config import RunConfig
from fedseqrec.models.config import COUNTED_MODELS, FEDERATED_MODELS
from fedseqrec.options import add_options, from_args
from fedseqrec.results.folder import RunFolder, recorded_data
from fedseqrec.results.summary import format_round, released_round, summary_table
from fedseqrec.simulation.attacks import AttackConfig

DEPLOY_HELP = """Flower's deployment engine: a SuperLink and SuperNodes as separate processes

Run federations on Flower's deployment engine. See docs/deployment.md for separate hosts."""
NOT_A_FLAG = ("data.max_len",)  # the data's own truncation; a run has the model's --max-len


def add_run_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """What a federated run is made of: data, partition (IID by default), model, training, federation, privacy."""
    add_options(parser, RunConfig(), exclude=NOT_A_FLAG + exclude, choices={"name": FEDERATED_MODELS})
    unset_defaults(parser, RunConfig(), ("rounds",))  # --resume keeps a run's own number of rounds unless given
    add_config_option(parser)


def run_config(args: argparse.Namespace) -> RunConfig:
    return from_args(RunConfig(), args, exclude=NOT_A_FLAG)


def print_results(results: dict, folder: Path) -> None:
    test, task = results["test"], task_of(results["task"])
    print()
    print(summary_table(RunFolder(folder).rounds(), task))
    print()
    if results.get("stopped"):
        print(f"stopped: {results['stopped']}")
    print(
        f"{results['model']} / {results['strategy']}: {released_round(results, task.selection)}: "
        f"test {task.headline_of(test)}"
    )
    for line in results.get("notes", []):
        print(line)
    print(f"run folder: {folder.resolve()}")


# The engines are imported by the commands that run them: Ray and Flower's runtimes take seconds to import, which
# `fedseqrec --help` and the data commands should not pay.


def cmd_simulate(args: argparse.Namespace) -> int:
    """a federated run on this machine (Flower simulation engine)

    Split --data into clients (--partition, --clients), run --rounds of federated training through Flower's
    simulation engine and evaluate the global model. Writes a run folder (--out): config.json, metrics.jsonl (one
    line per round), metrics.json, model.pt (best) and model_last.pt, summary.md. The same knobs are the run config
    of `flwr run .` (pyproject.toml, [tool.flwr.app.config]).
    """
    from fedseqrec.server.loop import Progress
    from fedseqrec.simulation.engine import simulate

    cfg = run_config(args)
    resume = Path(args.resume) if args.resume else None
    counted = cfg.model.name in COUNTED_MODELS  # one release: one round (RunConfig.planned)
    total = {"rounds": 1 if counted else args.rounds or cfg.algorithm.rounds}
    resumes_a_run = resume is not None and (resume / "config.json").is_file()  # (anything else: refused below)
    task = task_of(recorded_data(resume, find=False).task if resumes_a_run else cfg.data.task)

    def on_round(record: dict) -> None:
        print(format_round(record, total["rounds"], task), flush=True)

    def on_message(text: str) -> None:
        print(text, flush=True)

    results, folder = simulate(
        cfg,
        out=Path(args.out) if args.out else None,
        resume=resume,
        rounds=args.rounds if resume is not None else None,
        client_cpus=args.client_cpus,
        client_gpus=args.client_gpus,
        progress=Progress(on_round=on_round, on_message=on_message),
        verbose=args.verbose,
        stop_on_signals=True,
        attack=from_args(AttackConfig(), args),
    )
    print_results(results, folder.path)
    return run_audit(folder.path) if folder.config().data.audited else 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """a real deployment on 127.0.0.1: SuperLink, one SuperNode per client, flwr run

    Export one data folder per client, start a SuperLink and one SuperNode per client on 127.0.0.1 as separate
    processes (each with its own Flower home folder), run the app against them through `flwr run`, stream its
    progress and write the usual run folder (--out, default runs/deploy-STRATEGY-MODEL-TIME; the deployment's
    certificates, node ledgers and logs in --out/deployment). Every process it starts is stopped when the run
    ends, fails or is interrupted. TLS and SuperNode authentication are on unless --insecure.
    """
    from fedseqrec.deployment.runner import deploy_local

    results, out = deploy_local(
        run_config(args),
        Path(args.out) if args.out else None,
        secure=not args.insecure,
        isolation=args.isolation,
        on_line=lambda line: print(line, flush=True),
        verbose=args.verbose,
        timeout=args.timeout,
    )
    print_results(results, out)
    if not RunFolder(out).config().data.audited:
        return 0
    made = out / "audit.json"  # (by the ServerApp: `flwr run` audits the run it ran)
    return run_audit(out, found=json.loads(made.read_text()) if made.is_file() else None)


def cmd_deploy_app(args: argparse.Namespace) -> int:
    """write the Flower App (run config) for `flwr run` against a deployment

    Write APP_DIR/pyproject.toml: a Flower App with fedseqrec's ServerApp and ClientApp and a run config made from
    the same flags as `simulate` (paths as seen on the SuperLink's host; --out, the run folder there, absolute).
    Submit it with `flwr run APP_DIR CONNECTION --stream`. fedseqrec must be installed on the SuperLink's and
    every SuperNode's host.
    """
    from fedseqrec.deployment.local import write_deployed_app

    app = write_deployed_app(Path(args.app), run_config(args))
    print(f"Flower App written to {(app / 'pyproject.toml').resolve()}")
    print(f"run it with: flwr run {app} CONNECTION --stream")
    return 0


def cmd_deploy_credentials(args: argparse.Namespace) -> int:
    """TLS certificates and SuperNode keys for a deployment

    Write a CA (ca.crt, ca.key), a SuperLink certificate for --hosts (server.pem, server.key) and --nodes SuperNode
    key pairs (node-000, node-000.pub, ...) to --out. Register each .pub with `flwr supernode register`; copy each
    private key to its SuperNode's host only.
    """
    from fedseqrec.deployment.credentials import write_credentials

    for line in write_credentials(Path(args.out), args.hosts, args.nodes, args.force):
        print(line)
    return 0


def register_simulate(commands: argparse._SubParsersAction) -> None:
    simulate = add_command(commands, "simulate", cmd_simulate)
    add_run_options(simulate)
    add_options(simulate, AttackConfig())
    r = simulate.add_argument_group("simulation")
    r.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run after its last completed round, with its own configuration (only --rounds may change)",
    )
    r.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="CPUs per simulated client: clients run side by side on (CPUs / this) Ray workers",
    )
    r.add_argument(
        "--client-gpus",
        type=float,
        default=None,
        help="share of a GPU per simulated client, when --device puts them on one (default: as many clients side by "
        "side on the GPUs as on the CPUs; 0: clients on the CPU, the server's evaluation on the GPU)",
    )
    r.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")


def register_deploy(commands: argparse._SubParsersAction) -> None:
    deploy = add_command(commands, "deploy", DEPLOY_HELP)
    deploy_commands = deploy.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    local = add_command(deploy_commands, "local", cmd_deploy_local)
    add_run_options(local)
    r = local.add_argument_group("deployment")
    security = r.add_mutually_exclusive_group()
    security.add_argument(
        "--tls",
        action="store_true",
        help="TLS between SuperNodes and SuperLink, and SuperNode authentication (the default)",
    )
    security.add_argument(
        "--insecure", action="store_true", help="no TLS and no SuperNode authentication (loopback trials only)"
    )
    r.add_argument(
        "--isolation",
        default="subprocess",
        choices=("subprocess", "process"),
        help="subprocess: each SuperNode starts its ClientApp executor; process: we start one per SuperNode",
    )
    r.add_argument("--verbose", action="store_true", help="show everything `flwr run --stream` prints")
    r.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="stop everything if the run takes longer"
    )

    app = add_command(deploy_commands, "app", cmd_deploy_app)
    app.add_argument("app", metavar="APP_DIR", help="folder to write the app to")
    add_run_options(app)

    credentials = add_command(deploy_commands, "credentials", cmd_deploy_credentials)
    credentials.add_argument("--out", required=True, metavar="DIR", help="folder for the certificates and keys")
    credentials.add_argument(
        "--hosts",
        nargs="+",
        default=["127.0.0.1", "localhost"],
        metavar="HOST",
        help="names and IP addresses SuperNodes dial the SuperLink at (the certificate is valid for these)",
    )
    credentials.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make")
    credentials.add_argument("--force", action="store_true", help="overwrite an existing folder's files")
