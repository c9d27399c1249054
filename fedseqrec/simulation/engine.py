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
from dataclasses import replace
from pathlib import Path

from fedseqrec.errors import UserError
from fedseqrec.runconfig import FederationConfig
from fedseqrec.server.federation import Progress
from fedseqrec.server.rundir import RunFolder

# Flower would otherwise check for updates, send telemetry, and `uv sync` the project's dependencies into a fresh
# environment (pulling a CUDA build of torch).
FLOWER_ENVIRONMENT = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning: this machine has no GPU to hide
}


def count_clients(cfg: FederationConfig) -> int:
    """How many clients (simulated SuperNodes) the partition makes; loads the data, so bad input fails here."""
    from fedseqrec.client.task import cached_dataset

    if cfg.partition in ("iid", "dirichlet") and cfg.clients is None:
        raise UserError(f"the {cfg.partition} partition needs --clients K")
    ds = cached_dataset(cfg.data_config())
    n = cfg.clients if cfg.clients is not None and cfg.partition != "attribute" else ds.partition.n_clients
    if cfg.clients_per_round is not None and cfg.clients_per_round > n:
        raise UserError(f"--clients-per-round {cfg.clients_per_round} is more than the {n} clients of the partition")
    if cfg.min_clients > n:
        raise UserError(f"--min-clients {cfg.min_clients} is more than the {n} clients of the partition")
    if cfg.dp and cfg.delta is not None:
        largest = max(len(users) for users in ds.partition.clients())
        if cfg.delta >= 1.0 / largest:
            raise UserError(
                f"--delta {cfg.delta} is not below 1 / {largest} (the users of the largest client): such a δ "
                "allows leaking a whole user's data; choose a smaller one"
            )
    return n


def check_budget_left(folder: RunFolder, cfg: FederationConfig) -> None:
    """Refuse to resume a private run in which too few clients could train another round (a round like their
    last one would take them over the budget)."""
    from fedseqrec.privacy.accounting import epsilon

    path = folder.path / "privacy.json"
    if not cfg.dp or not path.exists() or cfg.privacy_budget() is None:
        return
    clients = json.loads(path.read_text())["clients"]
    spent = 0
    for entry in clients.values():
        records = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in entry["ledger"]]
        if records and epsilon(records + records[-1:], entry["delta"], entry["accountant"]) > cfg.privacy_budget():
            spent += 1
    if clients and len(clients) - spent < cfg.min_clients:
        raise UserError(
            f"--resume {folder.path}: privacy budget already spent: {spent} of {len(clients)} clients cannot train "
            f"another round within ε = {cfg.privacy_budget():g}, fewer than --min-clients {cfg.min_clients} left"
        )


def prepare_run(cfg: FederationConfig, out: Path | None, resume: Path | None, rounds: int | None):
    """The configuration and run folder of a new or resumed run, checked before anything is written."""
    if resume is not None:
        folder = RunFolder.open(resume)
        cfg = folder.config()
        if rounds is not None:
            cfg = replace(cfg, rounds=rounds)
        cfg.validate()
        n = count_clients(cfg)
        check_budget_left(folder, cfg)
        folder.write_config(cfg)
        return cfg, folder, n
    cfg.validate()
    n = count_clients(cfg)
    from fedseqrec.server.server_app import default_run_folder

    path = out or (Path(cfg.out) if cfg.out else default_run_folder(cfg))
    cfg = replace(cfg, out=str(path))
    return cfg, RunFolder.create(path, cfg), n


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
    cfg: FederationConfig,
    out: Path | None = None,
    resume: Path | None = None,
    rounds: int | None = None,
    client_cpus: float = 1.0,
    progress: Progress | None = None,
    client_app=None,
    verbose: bool = False,
) -> tuple[dict, RunFolder]:
    os.environ.update(FLOWER_ENVIRONMENT)
    cfg, folder, n_clients = prepare_run(cfg, out, resume, rounds)
    from flwr.simulation import run_simulation

    from fedseqrec.client.client_app import app as default_client_app
    from fedseqrec.server.server_app import make_server_app

    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": verbose},
    }
    with quiet_flower(verbose):
        run_simulation(
            server_app=make_server_app(cfg, folder, progress),
            client_app=client_app or default_client_app,
            num_supernodes=n_clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    metrics = folder.path / "metrics.json"
    return json.loads(metrics.read_text()), folder
