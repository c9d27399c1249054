"""One pass of local training, shared by centralized training and federated clients (plain or DP-SGD)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fedseqrec.models.base import SeqBatch, SequentialRecommender


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
) -> tuple[float, int]:
    """Mean training loss over the steps taken, and the number of steps.

    ``penalty``: a term added to every step's loss but not to the reported loss (FedProx's proximal term).
    ``empty_step``: what an empty Poisson batch does instead (DP-SGD: a noise-only step)."""
    model.train()
    total, steps = 0.0, 0
    for tensors in loader:
        batch = to_batch(tensors)
        if batch.items.shape[0] == 0:  # Poisson sampling can draw an empty batch: still a step for DP
            optimizer.zero_grad(set_to_none=True)
            empty_step() if empty_step is not None else optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = model.calculate_loss(batch, criterion)
            (loss + penalty() if penalty is not None else loss).backward()
            optimizer.step()
            total += float(loss.detach() if hasattr(loss, "detach") else loss)
        steps += 1
        if on_step is not None:
            on_step(total / steps)
        if max_steps is not None and steps >= max_steps:
            break
    return (total / steps if steps else float("nan")), steps
