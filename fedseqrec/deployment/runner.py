"""``fedseqrec deploy local``: the whole path a real deployment takes, on this machine.

Export one data folder per client, start the SuperLink and one SuperNode per client (TLS and SuperNode
authentication unless ``insecure``), run the app through ``flwr run``, stream the ServerApp's progress, and stop
every process — also when the run fails or the user presses Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fedseqrec.data.export import export_partitions
from fedseqrec.deployment.local import LocalDeployment, write_app
from fedseqrec.errors import RunError, UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.processes import watched_by_a_watchdog
from fedseqrec.server.planning import default_run_folder, plan_run

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The ServerApp logs each message twice (Flower's handler, and a timestamped copy); Flower adds its own chatter.
DUPLICATE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:")
FLOWER_CHATTER = re.compile(r"configure_(train|evaluate): Sampled|aggregate_(train|evaluate): Received|^\s*$")
LEVEL = re.compile(r"^(INFO|WARNING|ERROR|DEBUG)\s*:\s*(.*)$")


def progress_line(raw: str, verbose: bool = False) -> str | None:
    """What of ``flwr run --stream``'s output the user sees: the ServerApp's messages, warnings and errors."""
    line = ANSI.sub("", raw).rstrip()
    if verbose:
        return line
    if DUPLICATE.match(line):
        return None
    level = LEVEL.match(line)
    if level is None:
        return None
    kind, text = level.groups()
    if kind == "DEBUG" or FLOWER_CHATTER.search(text):
        return None
    return text if kind == "INFO" else f"{kind}: {text}"


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`) stops the deployment as Ctrl-C does: every process we started goes."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def deployment_folder(cfg: RunConfig, out: Path | None) -> Path:
    return out if out is not None else default_run_folder(cfg, prefix="deploy-")


def prepare_deployment(cfg: RunConfig, out: Path) -> tuple[RunConfig, int]:
    """The run's configuration as the deployed ServerApp sees it (absolute paths), checked before anything
    starts; and the number of clients (SuperNodes)."""
    if (out / "deployment").exists():  # its nodes' ledgers would carry over into this run
        raise UserError(f"{out}: holds the deployment of an earlier attempt; choose another --out or delete it")
    plan = plan_run(cfg, out)
    data = plan.config.data.data
    data = data if data == "shop" else str(Path(data).resolve())
    return plan.config.replace(data=data, out=str(out.resolve())), plan.clients


def deploy_local(
    cfg: RunConfig,
    out: Path | None,
    secure: bool = True,
    isolation: str = "subprocess",
    on_line: Callable[[str], None] = print,
    verbose: bool = False,
    timeout: float | None = None,
) -> tuple[dict, Path]:
    """Run ``cfg`` on a local deployment; the final metrics (``out/metrics.json``) and the run folder."""
    out = deployment_folder(cfg, out).resolve()
    cfg, n = prepare_deployment(cfg, out)
    folder = out / "deployment"
    export = export_partitions(cfg.data, folder / "data")
    on_line(f"exported {n} client folders to {folder / 'data'}")
    if cfg.evaluation.mode == "federated":  # as in a real deployment: the server holds no user's events
        cfg = cfg.replace(data=str(folder / "data" / export["server"]))
    mode = "TLS and SuperNode authentication" if secure else "INSECURE (no TLS, no SuperNode authentication)"
    with (
        watched_by_a_watchdog(),  # killed by SIGKILL, this process cannot stop the deployment: its watchdog does
        _terminate_as_interrupt(),
        LocalDeployment(folder, secure=secure, isolation=isolation) as deployment,
    ):
        deployment.start()
        on_line(f"SuperLink on 127.0.0.1:{deployment.port} ({mode}); logs in {folder / 'logs'}")
        for client in export["clients"]:
            node = deployment.add_node(folder / "data" / client["folder"])
            deployment.start_node(node)
        on_line(f"{n} SuperNodes started ({isolation} isolation)")
        app = write_app(folder / "app", cfg.to_run_config())

        def show(raw: str) -> None:
            line = progress_line(raw, verbose)
            if line is not None:
                on_line(line)

        code = deployment.run_app(app, show, timeout=timeout)
    metrics = out / "metrics.json"
    if code != 0 or not metrics.exists():
        log = folder / "logs" / "flwr-run.log"
        tail = "\n".join(ANSI.sub("", log.read_text(errors="replace")).splitlines()[-12:]) if log.exists() else ""
        raise RunError(f"the deployed run failed (flwr run exit code {code}); logs in {folder / 'logs'}:\n{tail}")
    return json.loads(metrics.read_text()), out
