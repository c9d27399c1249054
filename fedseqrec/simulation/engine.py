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

import torch
from flwr.simulation import run_simulation

from fedseqrec.client.client_app import app as default_client_app
from fedseqrec.client.client_app import make_client_app, partition_of
from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.environment import FLOWER_ENVIRONMENT
from fedseqrec.models.config import DeviceConfig
from fedseqrec.models.device import resolve_device
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
    client_gpus: float | None = None,
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
    if attacked and cfg.compression.compression != "none":
        raise UserError(
            f"--attack does not combine with --compression {cfg.compression.compression}: the attacks rewrite a "
            "client's float32 weights"
        )
    os.environ.update(FLOWER_ENVIRONMENT)
    cfg, folder, n_clients = prepare_run(cfg, out, resume, rounds)

    def where() -> str:
        return f"the run folder keeps its last completed round: continue with --resume {folder.path}"

    try:  # the folder is held from here on: released however the run ends, a refused option included
        if attacked:
            client_app = _attacked_client_app(attack, cfg, folder, n_clients, progress)
        backend = {
            "client_resources": client_resources(cfg.fit.hardware, client_cpus, client_gpus),
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": verbose},
        }
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


def client_resources(
    hardware: DeviceConfig,
    client_cpus: float,
    client_gpus: float | None = None,
    cpus: int | None = None,
    gpus: int | None = None,
) -> dict[str, float]:
    """What each simulated client asks of Ray. Ray hides every GPU from a client that asks for none, so a run on
    a GPU gives each client a share of one: ``client_gpus``, or by default as many clients side by side on the GPUs
    as the CPUs hold (``gpus × client_cpus / cpus``). ``cpus`` and ``gpus``: this machine's (asked of the system and
    torch when not given)."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    gpus = torch.cuda.device_count() if gpus is None else gpus
    device = hardware.device
    if client_gpus is not None and not 0 <= client_gpus <= 1:
        raise UserError(f"--client-gpus must be in [0, 1] (a share of one GPU), got {client_gpus:g}")
    if client_gpus == 0 and device.startswith("cuda"):
        raise UserError(f"--client-gpus 0 hides the GPUs from the clients, and --device {device} needs one: use auto")
    if client_gpus is not None and client_gpus > 0:
        if device == "cpu" or gpus == 0:
            why = "--device cpu keeps the clients on the CPU" if device == "cpu" else "torch sees no GPU here"
            raise UserError(f"--client-gpus {client_gpus:g}: {why}")
        share = client_gpus
    elif device == "cpu" or client_gpus == 0:
        share = 0.0
    elif gpus == 0:
        if device != "auto":
            resolve_device(device)  # refused with the reason
        share = 0.0
    else:
        share = min(1.0, gpus * client_cpus / cpus)
    if share > 0 and device.startswith("cuda:") and device != "cuda:0":
        raise UserError(
            f"--device {device}: Ray shows each simulated client only the GPU it is given, as cuda:0; use --device "
            "cuda or auto (CUDA_VISIBLE_DEVICES chooses the GPUs of a simulation)"
        )
    return {"num_cpus": client_cpus, "num_gpus": share}


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
