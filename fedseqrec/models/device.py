"""Where a model computes (``--device``) and in what precision (``--precision``).

Models and their optimisers live on the chosen device; data is prepared on the CPU (numpy, the loaders) and each
batch follows its model there (``SeqBatch.to``). Everything a model hands back to the rest of the package
(weights for Flower, scores for the metrics, checkpoints) comes back to the CPU first, so the layers above never
see a device.
"""

from __future__ import annotations

import contextlib
import re

import torch

from fedseqrec.errors import UserError
from fedseqrec.models.base import SeqBatch

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU; ``cuda`` / ``cuda:N``: that GPU, refused
    with a line the user can act on when torch sees none (a CPU build of torch, or ``CUDA_VISIBLE_DEVICES``)."""
    if not DEVICE_SPEC.match(spec):
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device())
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(
            f"--device {spec}: torch sees no CUDA GPU here (torch {torch.__version__}, {build}); "
            "use --device cpu or auto, or install a CUDA build of torch"
        )
    device = torch.device(spec)
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return torch.device("cuda", index)


def check_precision(device: torch.device, precision: str) -> None:
    """bf16 autocast needs a device that computes in bfloat16; refused before training, not during it."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass and the loss in bfloat16 where the matrix products allow it (``--precision bf16``); the
    weights, their gradients and the optimiser stay float32. fp32 (the default): no autocast at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def device_name(device: torch.device) -> str:
    """What results record: ``cpu``, or the GPU's own name (``cuda:0 NVIDIA H100 80GB HBM3``)."""
    return "cpu" if device.type == "cpu" else f"{device} {torch.cuda.get_device_name(device)}"


def device_of(model) -> torch.device:
    """The device of a model's weights (the CPU for a model without any, the popularity baseline)."""
    parameters = model.parameters() if hasattr(model, "parameters") else iter(())
    first = next(iter(parameters), None)
    return torch.device("cpu") if first is None else first.device


def scores_on_cpu(model, batch: SeqBatch) -> torch.Tensor:
    """``full_sort_predict`` on the model's device; the scores back on the CPU, in float32, for the metrics."""
    return model.full_sort_predict(batch.to(device_of(model))).float().cpu()


def on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict whose tensors are on the CPU (what Flower's arrays, checkpoints and numpy expect)."""
    return {key: value.detach().cpu() for key, value in state.items()}
