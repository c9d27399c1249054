"""Making a model trainable by Opacus without changing what it computes."""

from __future__ import annotations

from opacus.validators import ModuleValidator
from torch import nn

from fedseqrec.errors import UserError


def dp_compatible(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the layers Opacus cannot handle replaced (``nn.GRU``/``nn.LSTM`` by
    ``DPGRU``/``DPLSTM``), each replacement carrying the original layer's weights."""
    if getattr(getattr(model, "cfg", None), "loss", "ce") == "sampled":
        raise UserError(
            "the sampled loss indexes the output weights outside a module call, which DP-SGD would not "
            "clip: use --loss ce with differential privacy"
        )
    if getattr(getattr(model, "cfg", None), "tie_items", False):
        raise UserError(
            "--tie-items scores items with the embedding table outside the embedding's module call, which DP-SGD "
            "would not clip: leave it off with client-local DP-SGD (the user-level mechanisms, --privacy user-level "
            "and dp-fedavg, take it)"
        )
    return replace_unsupported_layers(model)


def replace_unsupported_layers(model: nn.Module) -> nn.Module:
    """The copy of :func:`dp_compatible`, whatever the model's loss (per-user gradients by ``torch.func`` take any)."""
    fixed = ModuleValidator.fix(model)
    originals = dict(model.named_modules())
    for name, module in fixed.named_modules():
        original = originals.get(name)
        if name and original is not None and type(module) is not type(original):
            # Loaded module by module: Opacus' renamed parameters only map back at the layer itself.
            module.load_state_dict(original.state_dict())
            module.to(next(original.parameters()).device)  # Opacus builds its layers on the CPU
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise UserError(f"{type(model).__name__} has layers Opacus cannot train: {errors}")
    return fixed
