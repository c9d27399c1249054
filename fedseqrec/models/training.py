"""One pass of local training, shared by centralized training and federated clients (plain or DP-SGD)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from fedseqrec.models.base import SeqBatch, SequentialRecommender
from fedseqrec.models.device import autocast, device_of


@dataclass
class TrainResult:
    examples: int  # users with a training target: the FedAvg weight
    loss: float
    steps: int
    seconds: float


def round_seed(seed: int, server_round: int, client: int) -> int:
    """Every client's randomness in every round, from the run seed alone: reruns and resumed runs match."""
    return int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0])


def train_epoch(
    model: SequentialRecommender,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    to_batch: Callable[[tuple], SeqBatch],
    criterion=None,
    max_steps: int | None = None,
    on_step: Callable[[float], None] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    empty_step: Callable[[], None] | None = None,
    stop: Callable[[], bool] | None = None,
    packed: bool = False,
    precision: str = "fp32",
) -> tuple[float, int]:
    """Mean training loss over the steps taken, and the number of steps.

    ``penalty``: a term added to every step's loss but not to the reported loss (FedProx's proximal term).
    ``empty_step``: what an empty Poisson batch does instead (DP-SGD: a noise-only step).
    ``stop``: asked after every step; True ends the epoch there (a time limit).
    ``packed``: the model's :meth:`packed_loss` (the same objective, without the padding's work): plain
    training only, never under DP-SGD's per-sample gradients.
    ``precision``: ``bf16`` computes the forward pass and the loss under bfloat16 autocast (``--precision``).
    Batches are moved to the model's device (``--device``)."""
    model.train()
    device = device_of(model)
    total, steps = 0.0, 0
    for tensors in loader:
        batch = to_batch(tensors).to(device)
        if batch.items.shape[0] == 0:  # Poisson sampling can draw an empty batch: still a step for DP
            optimizer.zero_grad(set_to_none=True)
            empty_step() if empty_step is not None else optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = model.packed_loss(batch) if packed else model.calculate_loss(batch, criterion)
            (loss + penalty() if penalty is not None else loss).backward()
            optimizer.step()
            total += float(loss.detach() if hasattr(loss, "detach") else loss)
        steps += 1
        if on_step is not None:
            on_step(total / steps)
        if (max_steps is not None and steps >= max_steps) or (stop is not None and stop()):
            break
    return (total / steps if steps else float("nan")), steps
