"""What the tests share: the tiny federation the federation and privacy tests run (120 shop users in 3 clients, a
one-block model), Flower contexts and messages for calling a ClientApp in-process, a stand-in for Flower's grid,
and the independent accountant (Google's dp-accounting) every ε is checked against."""

from __future__ import annotations

from pathlib import Path

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedseqrec.federated.config import RunConfig

TINY = RunConfig.of(
    clients=3,
    rounds=3,
    shop_users=120,
    shop_items=80,
    shop_categories=5,
    shop_days=20,
    hidden=16,
    layers=1,
    heads=1,
    inner=32,
    max_len=20,
    batch_size=16,
)
TINY_FLAGS = [
    "--clients", "3", "--shop-users", "120", "--shop-items", "80", "--shop-categories", "5", "--shop-days", "20",
    "--hidden", "16", "--layers", "1", "--heads", "1", "--inner", "32", "--max-len", "20", "--batch-size", "16",
]  # fmt: skip # a flag and its value side by side, as typed


def client_context(cfg: RunConfig, partition: int, ledger: Path | None = None, **node_config) -> Context:
    """A node's context as Flower gives it: its partition, optionally its ledger file, an empty state."""
    config = {"partition-id": partition, "num-partitions": cfg.data.clients, **node_config}
    if ledger is not None:
        config["ledger-path"] = str(ledger)
    return Context(run_id=1, node_id=partition + 10, node_config=config, state=RecordDict(), run_config={})


def message(kind: str, arrays: ArrayRecord, cfg: RunConfig, server_round: int = 1, **extra) -> Message:
    """A train or evaluate message as the server sends it: the global weights and the whole run config."""
    config = ConfigRecord({**cfg.to_run_config(), "server-round": server_round, **extra})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type=kind)


class Nodes:
    """Flower's grid as a strategy's ``configure_*`` sees it: just the node ids."""

    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return self.ids


def independent_epsilons(records, delta: float) -> tuple[float, float]:
    """(RDP, PLD) ε of a list of (noise multiplier, sample rate, steps) records, composed in order, by Google's
    dp-accounting: the independent check of every ε we report."""
    merged = []  # consecutive rounds with the same mechanism: one self-composition (exact, and much faster)
    for s, q, n in records:
        if merged and merged[-1][:2] == (s, q):
            merged[-1] = (s, q, merged[-1][2] + n)
        else:
            merged.append((s, q, n))
    events = [
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n)
        for s, q, n in merged
    ]
    rdp = rdp_privacy_accountant.RdpAccountant()
    pld = pld_privacy_accountant.PLDAccountant()
    for event in events:
        rdp.compose(event)
        pld.compose(event)
    return rdp.get_epsilon(delta), pld.get_epsilon(delta)


def model_and_windows(name: str, **options):
    """The tiny data's global model (no dropout: the same function in every pass) and every user's window."""
    import torch

    from fedseqrec.federated.task import build_global_model, cached_dataset
    from fedseqrec.models.batching import TrainingWindows

    cfg = TINY.replace(model=name, dropout=0.0, **options)
    ds = cached_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_global_model(ds.sequences, cfg.model)
    return model, TrainingWindows(ds.sequences, ds.split, max_len=cfg.model.max_len)


def flat(total: dict):
    """Parameters (or their sums) as one vector, in name order."""
    import torch

    return torch.cat([t.reshape(-1) for _, t in sorted(total.items())])


# --- limits on wall-clock time, from the work -----------------------------------------------------------------------

# Seconds the pace workload takes on an idle 2-core machine (the development machine, `python -c "from helpers
# import _pace_workload; print(_pace_workload())"` in tests/, median of five, nothing else running).
IDLE_PACE_SECONDS = 0.135


def _pace_workload() -> float:
    """A fixed single-threaded CPU workload, in seconds: what this machine's busyness does to one core's work."""
    import time

    start = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return time.perf_counter() - start


def work_limit(idle_seconds: float) -> float:
    """A limit on wall-clock time for work that takes ``idle_seconds`` at most on an idle 2-core machine, scaled by
    how slow this machine is now (measured when asked: a busy machine gets a longer limit, never a shorter one)."""
    import statistics

    slowdown = statistics.median(_pace_workload() for _ in range(3)) / IDLE_PACE_SECONDS
    return idle_seconds * max(1.0, slowdown)


def benchmark_script(name: str):
    """benchmarks/NAME.py, imported as the script it is (its own imports of its neighbours resolve)."""
    import importlib
    import sys

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)
