"""AdamW without the ``torch._dynamo`` import.

``torch.optim`` imports ``torch._dynamo`` on an optimizer's first use: ≈ 2.4 s of CPU in every fresh process,
and a deployed ClientApp is a fresh process for every message. Two places do it:

- ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` are wrapped in ``torch._disable_dynamo``, which
  imports it on the first call and then keeps the function to call in a cache attribute; we fill that cache with
  the plain function, which is what the wrapper calls outside ``torch.compile`` (nothing here is compiled);
- ``Adam.step`` / ``AdamW.step`` import it on every call (to place graph breaks for the compiler): :class:`AdamW`
  below is the same update (decoupled weight decay, bias-corrected moments, as ``torch.optim.AdamW`` computes
  it) with a plain ``torch.no_grad`` step.

Where torch's internals differ, the cache is left alone (the import then happens, nothing breaks).
"""

from __future__ import annotations

import functools
import math

import torch

from fedseqrec.models.config import linear_decay

_DISABLE_CACHE = "__dynamo_disable"


@functools.cache
def _skip_dynamo_import() -> None:
    try:
        from torch import _compile
    except ImportError:  # another torch: leave it alone
        return
    marker = getattr(_compile._disable_dynamo(lambda: None), "__code__", None)
    for owner in (torch.optim.Optimizer, *_subclasses(torch.optim.Optimizer)):
        for attribute in vars(owner).values():
            wrapped = getattr(attribute, "__wrapped__", None)
            wrapper = getattr(attribute, "__code__", None) is marker
            if wrapper and wrapped is not None and getattr(wrapped, _DISABLE_CACHE, None) is None:
                setattr(wrapped, _DISABLE_CACHE, wrapped)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter), computed as ``torch.optim.AdamW``'s single-tensor path does."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        _skip_dynamo_import()
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step, exp_avg, exp_avg_sq, grad = state["step"], state["exp_avg"], state["exp_avg_sq"], param.grad
                param.mul_(1 - lr * decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                param.addcdiv_(exp_avg, denominator, value=-lr / (1 - beta1**step))
        return loss


def adamw(params, lr: float, weight_decay: float) -> AdamW:
    return AdamW(params, lr=lr, weight_decay=weight_decay)


MOMENTS = ("exp_avg", "exp_avg_sq", "step")


def optimizer_moments(model: torch.nn.Module, optimizer: AdamW) -> dict[str, torch.Tensor]:
    """AdamW's state by parameter name (``NAME:exp_avg``, ``NAME:exp_avg_sq``, ``NAME:step``): what a stateful
    client keeps from one round to its next. Named, not numbered, so it outlives the optimiser object."""
    saved = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if state:
            saved[f"{name}:exp_avg"] = state["exp_avg"].detach().cpu().clone()
            saved[f"{name}:exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().clone()
            saved[f"{name}:step"] = torch.tensor([float(state["step"])], dtype=torch.float64)
    return saved


def restore_moments(model: torch.nn.Module, optimizer: AdamW, saved: dict[str, torch.Tensor]) -> None:
    """Give ``optimizer`` the moments :func:`optimizer_moments` kept; a parameter without them (or whose shape
    changed) starts afresh."""
    for name, param in model.named_parameters():
        kept = [saved.get(f"{name}:{key}") for key in MOMENTS]
        if any(value is None for value in kept) or kept[0].shape != param.shape:
            continue
        exp_avg, exp_avg_sq, step = kept
        optimizer.state[param] = {
            "step": int(step.reshape(-1)[0]),
            "exp_avg": exp_avg.to(param.device, param.dtype).clone(),
            "exp_avg_sq": exp_avg_sq.to(param.device, param.dtype).clone(),
        }


class LinearSchedule:
    """Learning rate of every group as a share of its own, set after each step (``train_epoch``'s ``on_step``):
    a linear rise from ``lr / warmup`` to ``lr`` over the first ``warmup`` steps, times — given ``total`` steps —
    a linear fall from 1 to ``1 / total`` at the last step. Post-LN Transformers (BERT) diverge or stall at a
    learning rate that they train well at once the attention has settled; the decay lets the last epochs settle
    where a constant rate keeps the weights (and validation) moving."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int = 0, total: int | None = None):
        self.optimizer, self.warmup, self.total, self.taken = optimizer, warmup, total, 0
        self.base = [group["lr"] for group in optimizer.param_groups]
        self._set()

    def share(self, step: int) -> float:
        """The share of the base rate that step ``step`` (0-based) takes."""
        rise = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        return rise * (1.0 if self.total is None else linear_decay(step, self.total))

    def _set(self) -> None:
        share = self.share(self.taken)
        for group, lr in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = lr * share

    def __call__(self, _loss: float) -> None:
        self.taken += 1
        self._set()
