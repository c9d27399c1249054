"""The private pieces of Flower we still use, checked for what we rely on: if a Flower release changes them, this
fails loudly here instead of silently in a federation. ``flwr`` is bounded to the minor version tested."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import flwr
import tomllib
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_is_bounded_to_the_tested_minor_version():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in dependencies if d.startswith("flwr"))
    low, high = re.search(r">=(\d+\.\d+),<(\d+\.\d+)", pin).groups()
    assert flwr.__version__.startswith(low + "."), f"tested with flwr {low}, installed {flwr.__version__}"
    assert [int(x) for x in high.split(".")] == [int(low.split(".")[0]), int(low.split(".")[1]) + 1]


def _reply(values, examples: int = 1) -> Message:
    metrics = MetricRecord({"num-examples": examples})
    arrays = ArrayRecord({"w": torch.tensor(values, dtype=torch.float32)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), dst_node_id=1, message_type="train")


def test_check_and_log_replies_keeps_the_valid_replies():
    """server/strategies.py (ItemWeighted) and privacy/dp_fedavg.py filter replies with it."""
    assert list(inspect.signature(FedAvg._check_and_log_replies).parameters)[:3] == ["self", "replies", "is_train"]
    good = _reply([1.0, 2.0])
    valid, errors = FedAvg()._check_and_log_replies([good], is_train=True)
    assert valid == [good] and not errors


def test_add_noise_to_aggregated_arrays_adds_the_analysed_gaussian_noise():
    """privacy/dp_fedavg.py releases noise on a round without updates through it: std σ·C / expected clients."""
    assert list(
        inspect.signature(DifferentialPrivacyServerSideFixedClipping._add_noise_to_aggregated_arrays).parameters
    ) == ["self", "aggregated_arrays"]
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=2.0, clipping_norm=0.5, num_sampled_clients=4
    )
    zeros = ArrayRecord({"w": torch.zeros(20_000)})
    noisy = strategy._add_noise_to_aggregated_arrays(zeros)["w"].numpy()
    assert abs(noisy.std() - 2.0 * 0.5 / 4) < 0.01 and abs(noisy.mean()) < 0.01
