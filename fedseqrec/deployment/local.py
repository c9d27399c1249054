"""A federation on this machine's loopback with Flower's deployment engine: one SuperLink and N SuperNodes as
separate processes, each with its own Flower home folder (as separate hosts would have).

    DEPLOYMENT/credentials/   CA, SuperLink certificate, one key pair per SuperNode (secure mode)
    DEPLOYMENT/superlink/     the SuperLink's Flower home and state database
    DEPLOYMENT/cli/           the ``flwr`` CLI's home: its connection to the SuperLink
    DEPLOYMENT/node-I/        SuperNode I's Flower home, node config and privacy ledger
    DEPLOYMENT/logs/          one log per process
    DEPLOYMENT/app/           the Flower App ``flwr run`` submits: fedseqrec's components and this run's config

Secure mode (the default) is what a real deployment runs: TLS with our own CA, and SuperNode authentication —
the SuperLink admits only SuperNodes whose public key was registered with ``flwr supernode register``.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedseqrec import __version__
from fedseqrec.deployment.credentials import Certificates, make_certificates, make_node_key
from fedseqrec.deployment.processes import ProcessGroup
from fedseqrec.errors import RunError, UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.environment import FLOWER_ENVIRONMENT
from fedseqrec.options import toml_table

HOST = "127.0.0.1"
CONNECTION = "fedseqrec"  # the CLI's name for this deployment's SuperLink
ISOLATION_MODES = ("subprocess", "process")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
    """Flower's commands from this Python's environment, whatever PATH says."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_environment() -> dict[str, str]:
    """Flower quiet and offline, and this Python's commands first on PATH: the SuperLink and SuperNodes start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**FLOWER_ENVIRONMENT, "PATH": path}


def write_app(folder: Path, run_config: dict) -> Path:
    """A Flower App whose components are fedseqrec's (imported from the installed package) and whose run config
    is this run's: ``flwr run`` needs no overrides, and the app bundle carries no source."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedseqrec-deployment"',
        f'version = "{__version__}"',
        'description = "fedseqrec on Flower\'s deployment engine"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedseqrec"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fedseqrec.server.server_app:app"',
        'clientapp = "fedseqrec.client.client_app:app"',
        "",
        "[tool.flwr.app.config]",
        *toml_table(run_config),
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def write_deployed_app(app: Path, cfg: RunConfig) -> Path:
    """``fedseqrec deploy app``: the Flower App of ``cfg`` for a SuperLink on another host (paths as seen there)."""
    if cfg.out is not None and not Path(cfg.out).is_absolute():
        raise UserError(f"--out {cfg.out}: give an absolute path: the ServerApp runs on the SuperLink's host")
    if cfg.data.data != "shop" and not Path(cfg.data.data).is_absolute():
        raise UserError(
            f"--data {cfg.data.data}: give an absolute path: the ServerApp reads it on the SuperLink's host"
        )
    cfg = cfg.planned()
    cfg.validate()
    if app.exists() and any(p.name != "pyproject.toml" for p in app.iterdir()):
        raise UserError(f"{app}: exists and holds more than an app's pyproject.toml; choose an empty folder")
    return write_app(app, cfg.to_run_config())


@dataclass
class Node:
    index: int
    folder: Path
    port: int
    data: Path
    key: Path | None  # private key; None in insecure mode

    @property
    def name(self) -> str:
        return f"supernode-{self.index}"

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.json"


class LocalDeployment:
    """Start with :meth:`start`, run apps with :meth:`run_app`, end with :meth:`close` (or use ``with``)."""

    def __init__(self, folder: Path, secure: bool = True, isolation: str = "subprocess"):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}")
        self.folder = Path(folder).resolve()
        self.secure, self.isolation = secure, isolation
        self.processes = ProcessGroup(self.folder / "logs", flower_environment())
        self.port = free_port()
        self.nodes: list[Node] = []
        self.certificates: Certificates | None = None

    # --- the SuperLink -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.secure:
            self.certificates = make_certificates(self.folder / "credentials")
        home = self.folder / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        argv = [
            _executable("flower-superlink"),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--database",
            str(home / "state.db"),
            "--disable-runtime-dependency-installation",
            *self._tls_server_options(),
        ]
        if self.secure:
            argv.append("--enable-supernode-auth")
        self.processes.start("superlink", argv, {"FLWR_HOME": str(home)})
        self._write_cli_config()
        self._wait_for_port("superlink", self.port)

    def _tls_server_options(self) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        c = self.certificates
        return [
            "--ssl-ca-certfile",
            str(c.ca),
            "--ssl-certfile",
            str(c.server_cert),
            "--ssl-keyfile",
            str(c.server_key),
        ]

    def _write_cli_config(self) -> None:
        home = self.folder / "cli"
        home.mkdir(parents=True, exist_ok=True)
        security = f"root-certificates = {json.dumps(str(self.certificates.ca))}" if self.secure else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{self.port}"\n{security}\n'
        )

    def _wait_for_port(self, name: str, port: int, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            process = self.processes.running.get(name)
            if process is None or process.poll() is not None:
                raise RunError(f"{name} exited during start-up; its log:\n{self.processes.log_tail(name)}")
            try:
                with socket.create_connection((HOST, port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise RunError(f"{name} did not listen on {HOST}:{port} within {seconds:.0f} s")

    # --- the flwr CLI --------------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {**self.processes.env, "FLWR_HOME": str(self.folder / "cli")}
        return subprocess.run(
            [_executable("flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env},
            cwd=self.folder,
        )

    def register(self, node: Node) -> None:
        public = node.key.with_name(node.key.name + ".pub")
        done = self.flwr("supernode", "register", str(public), CONNECTION, "--format", "json")
        if done.returncode != 0:
            raise RunError(f"registering {node.name}'s key failed: {(done.stdout + done.stderr).strip()[-800:]}")

    def connected_nodes(self) -> list[dict]:
        """The SuperLink's SuperNodes (registered and online or not), as ``flwr supernode list`` reports them."""
        done = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        if done.returncode != 0:
            raise RunError(f"flwr supernode list failed: {(done.stdout + done.stderr).strip()[-800:]}")
        return json.loads(done.stdout).get("nodes", [])

    # --- SuperNodes ----------------------------------------------------------------------------------------
    def add_node(self, data: Path, register: bool = True) -> Node:
        """A SuperNode serving the client folder ``data`` (from `fedseqrec data export-partitions`)."""
        index = len(self.nodes)
        folder = self.folder / f"node-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        key = None
        if self.secure:
            key = self.folder / "credentials" / f"node-{index}"
            make_node_key(key)
        node = Node(index, folder, free_port(), Path(data).resolve(), key)
        config = {"data-path": str(node.data), "ledger-path": str(node.ledger)}
        (folder / "node-config.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        self.nodes.append(node)
        if register and self.secure:
            self.register(node)
        return node

    def start_node(self, node: Node) -> None:
        argv = [
            _executable("flower-supernode"),
            "--superlink",
            f"{HOST}:{self.port}",
            "--host",
            HOST,
            "--port",
            str(node.port),
            "--node-config",
            str(node.folder / "node-config.toml"),
            "--isolation",
            self.isolation,
        ]
        if self.secure:
            argv += ["--root-certificates", str(self.certificates.ca), "--auth-supernode-private-key", str(node.key)]
        else:
            argv.append("--insecure")
        self.processes.start(node.name, argv, {"FLWR_HOME": str(node.folder / "flwr-home")})
        if self.isolation == "process":  # the SuperNode waits for an executor of ours on its Runtime API
            self._wait_for_port(node.name, node.port)
            executor = [
                _executable("flower-superexec"),
                "--runtime-api-address",
                f"{HOST}:{node.port}",
                "--insecure",
                "--executor",
                "subprocess",
            ]
            self.processes.start(f"{node.name}-superexec", executor, {"FLWR_HOME": str(node.folder / "flwr-home")})

    def kill_node(self, node: Node) -> None:
        """As if its host crashed."""
        if self.isolation == "process":
            self.processes.kill(f"{node.name}-superexec")
        self.processes.kill(node.name)

    def node_running(self, node: Node) -> bool:
        process = self.processes.running.get(node.name)
        return process is not None and process.poll() is None

    # --- runs ----------------------------------------------------------------------------------------------
    def run_app(self, app: Path, on_line: Callable[[str], None], timeout: float | None = None) -> int:
        """``flwr run APP --stream``: the ServerApp's log, line by line, until the run ends; its exit code."""
        env = {**os.environ, **self.processes.env, "FLWR_HOME": str(self.folder / "cli")}
        argv = [_executable("flwr"), "run", str(Path(app).resolve()), CONNECTION, "--stream"]
        with (self.folder / "logs" / "flwr-run.log").open("a") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=self.folder
            )
            self.processes.running["flwr-run"] = process
            self.processes.started.append(process.pid)
            # A watchdog, not a check between lines: a run that hangs prints nothing.
            fired = threading.Event()

            def stop_run() -> None:
                fired.set()
                process.kill()

            watchdog = threading.Timer(timeout, stop_run) if timeout is not None else None
            if watchdog is not None:
                watchdog.start()
            try:
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    on_line(line.rstrip("\n"))
                code = process.wait()
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            self.processes.running.pop("flwr-run", None)
        if fired.is_set():
            raise RunError(f"the run did not finish within {timeout:g} s; stopped (logs in {self.folder / 'logs'})")
        return code

    def close(self) -> None:
        self.processes.stop_all()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
