"""DP-SGD for a client's round of local training, with Opacus.

The privacy unit is one user: a training example is one user's whole (truncated) sequence, batches are drawn by
Poisson sampling with rate ``q = 1 / batches per epoch``, each user's gradient is clipped to ``max_grad_norm`` and
Gaussian noise of ``noise_multiplier * max_grad_norm`` is added to the sum. Each round is one ledger record
``(noise_multiplier, q, steps)``; the ledger composes them (a fresh PrivacyEngine per round is fine: its own
accountant is not what we report).

Grad-sample mode: ``ghost`` clipping (per-sample gradient norms without materialising per-sample gradients) for
the Transformer models, where each layer is called once per forward pass; ``hooks`` for the recurrent models,
whose cell layers are called once per time step — Opacus' ghost norms would count only one of those calls.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from fedseqrec.errors import UserError
from fedseqrec.models.base import SequenceLoss, SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.config import FitConfig
from fedseqrec.models.optim import adamw
from fedseqrec.models.training import train_epoch
from fedseqrec.privacy.compat import dp_compatible
from fedseqrec.privacy.ledger import LedgerRecord
from fedseqrec.privacy.round_plan import DPSettings


def grad_sample_mode_for(model: SequentialRecommender, requested: str) -> str:
    """``auto``: ghost clipping where the model allows it (see ``SequentialRecommender.ghost_clipping_safe``)."""
    if requested == "auto":
        return "ghost" if model.ghost_clipping_safe else "hooks"
    if requested == "ghost" and not model.ghost_clipping_safe:
        raise UserError(
            f"--grad-sample-mode ghost is not correct for {model.name}: its recurrent cell is called once per "
            "time step and Opacus' ghost clipping would see only one call; use hooks (or auto)"
        )
    return requested


@dataclass
class Private:
    """What Opacus made private: hooks to remove afterwards, the DP optimizer, the loss (ghost clipping computes
    it through its own criterion; None: the model's own) and the Poisson loader."""

    hooks: object
    optimizer: torch.optim.Optimizer
    criterion: object | None
    loader: DataLoader


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: str,
    label_smoothing: float,
    poisson: bool = True,
) -> Private:
    """Opacus' ``make_private`` on our own module (its state-dict names stay ours), in ``mode``; ``poisson``:
    batches drawn by Poisson sampling, as the accounting assumes (off only to time fixed batches)."""
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and accountant notices
        made = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=poisson,
            grad_sample_mode=mode,
            wrap_model=False,  # hooks on our own module: its state-dict names stay ours
            criterion=SequenceLoss(label_smoothing),
        )
    if mode == "ghost":
        hooks, optimizer, criterion, loader = made
        return Private(hooks, optimizer, criterion, loader)
    (hooks, optimizer, loader), _ = made, None
    return Private(hooks, optimizer, None, loader)


def train_privately(
    model: SequentialRecommender,
    windows: TrainingWindows,
    plan: LedgerRecord,
    dp: DPSettings,
    fit: FitConfig,
    seed: int,
) -> tuple[float, int, float]:
    """Trains ``model`` in place under DP-SGD for ``plan.steps`` steps: (mean loss, steps, seconds)."""
    start = time.perf_counter()
    mode = grad_sample_mode_for(model, dp.grad_sample_mode)
    private = dp_compatible(model)  # a copy; GRU/LSTM swapped for Opacus' layers with the same weights
    private.train()
    loader = DataLoader(windows, batch_size=fit.batch_size, generator=torch.Generator().manual_seed(seed))
    optimizer = adamw(private.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    made = make_private(
        private, optimizer, loader, plan.noise_multiplier, dp.max_grad_norm, mode, model.cfg.label_smoothing
    )
    hooks, optimizer, criterion, loader = made.hooks, made.optimizer, made.criterion, made.loader
    losses, steps = [], 0
    try:
        while steps < plan.steps:
            loss, taken = train_epoch(
                private,
                loader,
                optimizer,
                windows.batch_of,
                criterion,
                max_steps=plan.steps - steps,
                empty_step=lambda: _noise_only_step(optimizer, private, mode),
            )
            if taken == 0:
                break
            losses.append((loss, taken))
            steps += taken
    finally:
        hooks.cleanup()
    state = private.state_dict()
    # Opacus' DPGRU/DPLSTM state holds nn.GRU-style names and internal aliases: keep the model's own names.
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    finite = [(loss, n) for loss, n in losses if math.isfinite(loss)]
    mean_loss = sum(loss * n for loss, n in finite) / max(1, sum(n for _, n in finite)) if finite else float("nan")
    return mean_loss, steps, time.perf_counter() - start


def _noise_only_step(optimizer, model: torch.nn.Module, mode: str) -> None:
    """An empty Poisson batch is still one step of the mechanism: zero clipped sum, plus the noise."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
            if mode == "hooks":
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
