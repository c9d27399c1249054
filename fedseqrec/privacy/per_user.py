"""Every sampled user's own clipped contribution, computed for many users at once with ``torch.func``.

A user's contribution is the mean gradient along ``steps`` SGD steps of rate ``lr`` that the user takes alone from
the global weights w on their own window: (w − w_after) / (steps · lr). With one step it is the user's gradient at
w (DP-FedSGD); with more it is user-level DP-FedAvg's model delta, scaled so that the clipping norm C keeps the
meaning of a gradient norm whatever the number of steps. Each contribution is clipped to C before it is summed:
as a whole (``flat``), or per layer (``per-layer``: the top-level modules — item table, each block, scorer —
each to C·√(its parameters / all parameters), so the squared budgets add up to C² and the total still moves by at
most C).

Users are vectorised with ``vmap(grad(...))``: each keeps its own copy of the weights through its local steps,
``randomness="different"`` draws each user's own dropout masks and sampled negatives, and per-user gradients need
no hooks, so the sampled loss (which indexes the scorer outside a module call, invisible to Opacus' hooks) is
exact here. Recurrent layers run as Opacus' ``DPGRU`` / ``DPLSTM`` (``nn.GRU``'s fused kernel has no batching rule).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedseqrec.models.base import SeqBatch, SequenceLoss, SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.device import device_of
from fedseqrec.privacy import tied_table
from fedseqrec.privacy.compat import replace_unsupported_layers

CHUNK = 32  # users whose weights and gradients are held at once
CLIPPING = ("flat", "per-layer")


@dataclass(frozen=True)
class Contribution:
    """How a sampled user's contribution is made and bounded."""

    clip: float  # C: the norm every contribution is clipped to
    steps: int = 1  # local SGD steps (1: the gradient at the global model)
    lr: float = 0.1  # their rate (irrelevant for one step)
    clipping: str = "flat"


class _ViewLoss(nn.Module):
    """The model's loss on a prepared view, as a module call (what ``functional_call`` swaps weights into)."""

    def __init__(self, model: SequentialRecommender, width: int = 1) -> None:
        super().__init__()
        self.model = model
        self.criterion = SequenceLoss(model.cfg.label_smoothing)
        self.width = width  # the full view's: a view cut short of its padding still divides its sum by it

    def forward(self, view: SeqBatch) -> torch.Tensor:
        return self.model.loss_on_view(view, self.criterion) * (view.items.shape[1] / self.width)


def clipped_update_sum(
    model: SequentialRecommender,
    windows: TrainingWindows,
    chosen: np.ndarray,
    rule: Contribution,
    row_masks: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray, float]:
    """Σ over the chosen users of their clipped contributions: (the sum per trainable parameter, by the model's
    own names; every user's contribution norm before clipping; their mean loss at the global weights).

    ``row_masks``: per item table (by the model's own name), 1 for the rows that train and 0 for the others, which
    are left out of every contribution before it is clipped (and out of every local step)."""
    work = _vectorisable(model)
    work.train()
    wrapped = _ViewLoss(work)
    names = _own_names(model, work)
    device = device_of(model)
    masks = {n: row_masks[names[n]].to(device) for n in names if names[n] in (row_masks or {})}
    trained = {n: p.detach() for n, p in wrapped.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in wrapped.named_parameters() if not p.requires_grad}
    fixed.update(dict(wrapped.named_buffers()))
    budgets = _budgets(trained, rule)
    total = {n: torch.zeros_like(p) for n, p in trained.items()}
    norms, loss_sum = [], 0.0

    def user_loss(params: dict, items, events, gaps, lengths, targets, *queries) -> torch.Tensor:
        view = SeqBatch(
            items[None],
            events[None],
            gaps[None],
            lengths[None],
            targets[None],
            target_queries=queries[0][None] if queries else None,
        )
        return functional_call(wrapped, (params, fixed), (view,))

    # Users of like length share a chunk, and each chunk is computed only as wide as its longest view: on Amazon
    # Beauty (8.9 events a user, windows of 50) most positions are padding.
    order = np.argsort(windows.window_lengths()[chosen], kind="stable")
    # A tied item table under full cross-entropy: its per-user gradients are never formed (privacy.tied_table).
    factored = tied_table.applies(work, trained, rule.steps, rule.clipping)
    for start in range(0, len(chosen), CHUNK):
        part = chosen[order[start : start + CHUNK]]
        batch = windows.batch_of([torch.stack(c) for c in zip(*(windows[int(i)] for i in part), strict=True)])
        batch = batch.to(device)
        if factored:
            view = _view_tensors(wrapped, batch)[:5]  # (a search's words: only a query-aware scorer reads them)
            chunk, norm, losses = tied_table.clipped_chunk(work, trained, fixed, view, wrapped.width, rule.clip, masks)
            for n in total:
                total[n] += chunk[n]
        else:
            update, losses = _local_steps(wrapped, user_loss, trained, batch, rule, masks)
            factor, norm = _clip_factors(update, budgets)
            for n in total:
                total[n] += torch.einsum("b,b...->...", factor[n], update[n])
        norms.append(norm.cpu())
        loss_sum += float(losses.sum())
    return (  # on the CPU: the noise is drawn there, and Flower sends numpy arrays
        {names[n]: t.cpu() for n, t in total.items()},
        _in_order(torch.cat(norms).numpy() if norms else np.empty(0), order),
        (loss_sum / max(1, len(chosen))),
    )


def _in_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``values`` computed in ``order``, put back in the order of the users chosen."""
    placed = np.empty_like(values)
    placed[order] = values
    return placed


def _local_steps(wrapped: _ViewLoss, user_loss, trained: dict, batch: SeqBatch, rule: Contribution, masks: dict):
    """(each user's contribution, stacked by user; each user's loss at the global weights); rows a mask leaves out
    neither move in a local step nor appear in the contribution."""

    def kept(gradient: dict) -> dict:
        return {n: _masked(g, masks[n]) if n in masks else g for n, g in gradient.items()}

    users = batch.items.shape[0]
    view = _view_tensors(wrapped, batch)
    per_user = (0,) * len(view)
    with warnings.catch_warnings():  # "no batching rule" for CPU flash attention: a slower loop, still exact
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        if rule.steps == 1:
            step = vmap(grad_and_value(user_loss), in_dims=(None, *per_user), randomness="different")
            gradient, losses = step(trained, *view)
            return {n: g.detach() for n, g in kept(gradient).items()}, losses.detach()
        step = vmap(grad_and_value(user_loss), in_dims=(0, *per_user), randomness="different")
        own = {n: p.unsqueeze(0).expand(users, *p.shape).clone() for n, p in trained.items()}
        first = None
        for step_number in range(rule.steps):
            if step_number:
                view = _view_tensors(wrapped, batch)  # the cloze model: new masks each step
            gradient, losses = step(own, *view)
            gradient = kept(gradient)
            own = {n: (own[n] - rule.lr * gradient[n]).detach() for n in own}
            first = losses.detach() if first is None else first
        scale = 1.0 / (rule.steps * rule.lr)
        return {n: (trained[n].unsqueeze(0) - own[n]) * scale for n in own}, first


def _masked(per_user: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A (users, rows, …) stack with the rows the mask leaves out set to 0."""
    return per_user * mask.reshape(1, -1, *([1] * (per_user.dim() - 2)))


def _view_tensors(wrapped: _ViewLoss, batch: SeqBatch) -> tuple[torch.Tensor, ...]:
    """The training view's tensors, cut after the last position any user of the chunk fills: the models see
    padding only after a sequence (causal attention and recurrences never look ahead, bidirectional attention
    masks it), so what comes before is computed exactly as in the full window (whose width the loss keeps)."""
    view = wrapped.model.training_view(batch)
    wrapped.width = view.items.shape[1]
    filled = ((view.items != 0) | (view.targets != 0)).any(dim=0).nonzero()
    width = int(filled.max()) + 1 if len(filled) else 1
    queries = () if view.target_queries is None else (view.target_queries[:, :width],)
    cut = (view.items[:, :width], view.events[:, :width], view.gaps[:, :width])
    return *cut, view.lengths, view.targets[:, :width], *queries


def _budgets(trained: dict[str, torch.Tensor], rule: Contribution) -> tuple[dict[str, str], dict[str, float]]:
    """(each parameter's clipping group, each group's norm budget)."""
    if rule.clipping == "flat":
        return dict.fromkeys(trained, "all"), {"all": rule.clip}
    group_of = {n: _layer(n) for n in trained}
    sizes: dict[str, int] = {}
    for n, p in trained.items():
        sizes[group_of[n]] = sizes.get(group_of[n], 0) + p.numel()
    total = sum(sizes.values())
    return group_of, {g: rule.clip * math.sqrt(size / total) for g, size in sizes.items()}


def _layer(name: str) -> str:
    """The top-level module a parameter belongs to (``model.blocks.0.…`` → ``blocks.0``)."""
    parts = name.split(".")[1:]  # without the wrapper's "model."
    return ".".join(parts[:2]) if parts[0] in ("blocks", "layers") and len(parts) > 2 else parts[0]


def _clip_factors(update: dict, budgets: tuple[dict, dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each parameter's per-user scale factor, and each user's whole-contribution norm before clipping."""
    group_of, budget = budgets
    squares: dict[str, torch.Tensor] = {}
    for n, u in update.items():
        squares[group_of[n]] = squares.get(group_of[n], 0) + (u.reshape(u.shape[0], -1) ** 2).sum(dim=1)
    factors = {g: (budget[g] / (s.sqrt() + 1e-12)).clamp(max=1.0) for g, s in squares.items()}
    norm = torch.sqrt(sum(squares.values()))
    return {n: factors[group_of[n]] for n in update}, norm


def _vectorisable(model: SequentialRecommender) -> nn.Module:
    """The model itself, or for the recurrent ones a copy with Opacus' GRU/LSTM (same weights, same function)."""
    return replace_unsupported_layers(model) if model.recurrent else model


def _own_names(model: nn.Module, work: nn.Module) -> dict[str, str]:
    """The model's own state-dict name of each trainable parameter of ``_ViewLoss(work)``."""
    own = set(model.state_dict())
    by_id = {id(t): n for n, t in work.state_dict(keep_vars=True).items() if n in own}
    return {f"model.{n}": by_id[id(p)] for n, p in work.named_parameters() if p.requires_grad}
