"""A whole federation on one machine, through Flower's simulation engine (Ray), in this process.

The ServerApp runs in a thread of this process; each simulated client is a Ray actor with ``client_cpus`` CPUs
(Flower's default of 2 would run one client at a time on a 2-core machine). Ray is shut down when the run ends,
so nothing this starts outlives it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from flwr.simulation import run_simulation

from fedseqrec.client.client_app import app as default_client_app
from fedseqrec.client.client_app import make_client_app, partition_of
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.environment import FLOWER_ENVIRONMENT
from fedseqrec.processes import watched_by_a_watchdog
from fedseqrec.results.folder import RunFolder
from fedseqrec.server.loop import Progress
from fedseqrec.server.planning import prepare_run
from fedseqrec.server.server_app import make_server_app
from fedseqrec.simulation.attacks import AttackConfig, attack_mod
from fedseqrec.simulation.stopping import stop_at_once_on_signals


@contextlib.contextmanager
def quiet_flower(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def simulate(
    cfg: RunConfig,
    out: Path | None = None,
    resume: Path | None = None,
    rounds: int | None = None,
    client_cpus: float = 1.0,
    progress: Progress | None = None,
    client_app=None,
    verbose: bool = False,
    stop_on_signals: bool = False,
    attack: AttackConfig | None = None,
) -> tuple[dict, RunFolder]:
    """``stop_on_signals``: Ctrl-C / SIGTERM end the process at once (the command line; see ``stopping.py``);
    ``attack``: malicious clients (``attacks.py``)."""
    attacked = attack is not None and attack.attack != "none"
    if attacked and client_app is not None:
        raise ValueError("an attack wraps the default ClientApp: give no client_app with it")
    if attacked and cfg.secure.secure_aggregation:
        raise UserError(
            "--attack does not combine with --secure-aggregation: the attacks measure robust aggregation, which needs "
            "each update in the clear"
        )
    os.environ.update(FLOWER_ENVIRONMENT)
    cfg, folder, n_clients = prepare_run(cfg, out, resume, rounds)
    if attacked:
        client_app = _attacked_client_app(attack, cfg, folder, n_clients, progress)
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": verbose},
    }

    def where() -> str:
        return f"the run folder keeps its last completed round: continue with --resume {folder.path}"

    try:
        # (the watchdog: Ray's processes are stopped when the run ends, even by SIGKILL)
        with (
            quiet_flower(verbose),
            watched_by_a_watchdog(),
            stop_at_once_on_signals(where) if stop_on_signals else contextlib.nullcontext(),
        ):
            run_simulation(
                server_app=make_server_app(cfg, folder, progress),
                client_app=client_app or default_client_app,
                num_supernodes=cfg.algorithm.client_pool or n_clients,
                backend_config=backend,
                verbose_logging=verbose,
            )
    finally:
        folder.release()
    metrics = folder.path / "metrics.json"
    return json.loads(metrics.read_text()), folder


def _attacked_client_app(attack: AttackConfig, cfg: RunConfig, folder: RunFolder, n_clients: int, progress):
    malicious = attack.malicious(n_clients, cfg.data.seed)
    record = {
        "attack": attack.attack,
        "fraction": attack.attack_fraction,
        "scale": attack.attack_scale,
        "malicious_clients": malicious,
    }
    folder.write_json("attack.json", record)
    (progress or Progress()).on_message(f"attack {attack.attack}: malicious clients {malicious}")
    return make_client_app(mods=[attack_mod(attack, malicious, partition_of)])
