"""Before a run starts: its configuration checked, its clients counted, its run folder made (or reopened to
resume) — everything that can be refused is refused here, before anything is written or started."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from fedseqrec.errors import UserError
from fedseqrec.federated.config import RunConfig
from fedseqrec.federated.mechanisms import make_mechanism
from fedseqrec.federated.task import cached_dataset, expected_clients
from fedseqrec.models.config import COUNTED_MODELS
from fedseqrec.privacy.config import LOCAL_DPSGD, USER_LEVEL, check_delta
from fedseqrec.privacy.mechanism import RunFacts
from fedseqrec.results.folder import STATE, RunFolder

DEFAULT_SIMULATED_CLIENTS = 5  # iid and dirichlet partitions without --clients, on one machine
POOL_ABOVE = 256  # more simulated clients than this, a few of them a round: served by a pool of nodes


def with_client_pool(cfg: RunConfig, n_clients: int) -> RunConfig:
    """A simulation of many clients of which a round asks a few: a pool of nodes serves them (see
    server.directory.NodePool), large enough for a round's clients (Poisson sampling's too, with room)."""
    per_round = cfg.algorithm.clients_per_round
    if cfg.algorithm.client_pool is not None or n_clients <= POOL_ABOVE or per_round is None:
        return cfg
    return cfg.replace(client_pool=min(n_clients, 2 * per_round + 32))


def default_run_folder(cfg: RunConfig, prefix: str = "") -> Path:
    return Path("runs") / f"{prefix}{cfg.algorithm.strategy}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def with_default_clients(cfg: RunConfig) -> RunConfig:
    """A run on this machine needs a number of clients: --clients, else the default for iid and dirichlet."""
    if cfg.data.clients is None and cfg.data.partition in ("iid", "dirichlet"):
        return cfg.replace(clients=DEFAULT_SIMULATED_CLIENTS)
    return cfg


def count_clients(cfg: RunConfig) -> int:
    """How many clients (simulated SuperNodes) the partition makes; loads the data, so bad input fails here."""
    if cfg.data.partition in ("iid", "dirichlet") and cfg.data.clients is None:
        raise UserError(f"the {cfg.data.partition} partition needs --clients K")
    ds = cached_dataset(cfg.data)
    n = expected_clients(cfg) or ds.partition.n_clients
    algorithm = cfg.algorithm
    if algorithm.clients_per_round is not None and algorithm.clients_per_round > n:
        raise UserError(
            f"--clients-per-round {algorithm.clients_per_round} is more than the {n} clients of the partition"
        )
    if algorithm.min_clients > n:
        raise UserError(f"--min-clients {algorithm.min_clients} is more than the {n} clients of the partition")
    if cfg.privacy.mechanism == LOCAL_DPSGD and cfg.privacy.delta is not None:
        largest = max(len(users) for users in ds.partition.clients())
        check_delta(cfg.privacy.delta, largest, "the largest client")
    if cfg.privacy.mechanism == USER_LEVEL:  # its noise is calibrated to the users: refused now, not in round 1
        facts = RunFacts(None, algorithm.min_clients, cfg.data.partition, print, users=ds.sequences.n_users)
        make_mechanism(cfg.privacy, replace(facts, horizon=cfg.planned_horizon(), seed=cfg.data.seed))
    return n


def check_resume_budget(folder: RunFolder, cfg: RunConfig) -> None:
    """A private run whose budget cannot pay for another round is not resumed."""
    path = folder.path / "privacy.json"
    saved = path.read_text() if path.exists() else None
    facts = RunFacts(
        cfg.algorithm.clients_per_round,
        cfg.algorithm.min_clients,
        cfg.data.partition,
        print,
        users=cached_dataset(cfg.data).sequences.n_users,
        horizon=cfg.planned_horizon(),
        seed=cfg.data.seed,
    )
    try:
        make_mechanism(cfg.privacy, facts).check_resume(saved)
    except UserError as err:
        raise UserError(f"--resume {folder.path}: {err}") from err


def resumed_config(folder: RunFolder, rounds: int | None) -> RunConfig:
    """A run's own configuration; ``rounds`` may change, and nothing else. The DP horizon an --epsilon run was
    calibrated for stays: its noise multiplier does not change when the run is extended, and the budget (by
    default the target ε) stops the run when it is spent."""
    cfg = folder.config()
    if cfg.model.name in COUNTED_MODELS:  # its noise is drawn once; a second draw would spend the ε again
        raise UserError(
            f"--resume {folder.path}: a {cfg.model.name} run is one release, not rounds; start a new run instead"
        )
    if rounds is not None:
        cfg = cfg.replace(rounds=rounds)
    return cfg


def _resumed(folder: RunFolder, rounds: int | None) -> tuple[RunConfig, RunFolder, int]:
    if (folder.path / STATE).exists():
        folder.load_state()  # an unreadable state is refused before anything in the folder changes
    cfg = resumed_config(folder, rounds)
    cfg.validate()
    n = count_clients(cfg)
    check_resume_budget(folder, cfg)
    folder.write_config(cfg)
    return cfg, folder, n


@dataclass(frozen=True)
class RunPlan:
    """A new run as every engine starts it: its configuration, its run folder, and its number of clients (None
    under ``flwr run``, where the federation's nodes are counted when the run starts)."""

    config: RunConfig
    folder: Path
    clients: int | None


def plan_run(cfg: RunConfig, out: Path | None = None, prefix: str = "", starts_clients: bool = True) -> RunPlan:
    """The one place a new run is planned, whatever engine runs it (``simulate``, ``deploy``, ``flwr run``): the
    options' implications (:meth:`RunConfig.planned`), every check that needs no engine, the folder checked free,
    the clients counted. ``starts_clients``: the engine starts the clients here (simulate, deploy local), so a
    partition without ``--clients`` gets the default number and the data is read to count them; under ``flwr run``
    the federation's nodes decide, and the server may hold no user's data (federated evaluation)."""
    if starts_clients:
        cfg = with_default_clients(cfg)
    cfg = cfg.planned()
    cfg.validate()
    path = out or (Path(cfg.out) if cfg.out else default_run_folder(cfg, prefix))
    RunFolder.check_new(path)
    n = count_clients(cfg) if starts_clients else None
    return RunPlan(replace(cfg, out=str(path)), path, n)


def prepare_run(
    cfg: RunConfig, out: Path | None, resume: Path | None, rounds: int | None, prefix: str = ""
) -> tuple[RunConfig, RunFolder, int]:
    """The configuration and run folder of a simulated run, new or resumed, checked before anything is written."""
    if resume is not None:
        folder = RunFolder.open(resume)
        try:
            return _resumed(folder, rounds)
        except BaseException:
            folder.release()
            raise
    plan = plan_run(cfg, out, prefix)
    cfg = with_client_pool(plan.config, plan.clients)
    return cfg, RunFolder.create(plan.folder, cfg), plan.clients
