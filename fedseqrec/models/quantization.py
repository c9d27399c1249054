"""int8 weights for serving (``--int8``): dynamic quantization of the linear and recurrent layers.

Every ``nn.Linear`` (the item scorer, the attention projections and feed-forward layers) and every ``nn.GRU`` /
``nn.LSTM`` gets int8 weights with a scale per output row, and quantizes its input on the fly (torch's dynamic
quantization, fbgemm kernels on x86 CPUs). A tied scorer (``--tie-items``), which scores with the embedding table
itself, gets an int8 copy of the table's rows as a linear layer of its own; the embedding lookups stay float32.
Scores change by the rounding of 8-bit weights: ``benchmarks/serving.py`` measures what that does to the ranking.
Inference only: a quantized model cannot be trained, and it runs on the CPU.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from fedseqrec.errors import UserError
from fedseqrec.models.base import SequentialRecommender, TiedScorer

QUANTIZED = {nn.Linear, nn.GRU, nn.LSTM}


def int8_for_serving(model: SequentialRecommender) -> SequentialRecommender:
    """A copy of ``model`` (on the CPU, in eval mode) with int8 weights in its linear and recurrent layers."""
    first = next(model.parameters(), None)
    if first is None:
        raise UserError(
            f"--int8: a {model.name} model has no trained weights to quantize (its counts are served as saved)"
        )
    if first.device.type != "cpu":
        raise UserError("--int8: dynamic int8 quantization runs on the CPU; use --device cpu with it")
    if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in (
        torch.backends.quantized.supported_engines
    ):
        raise UserError("--int8: this build of torch has no int8 kernels for this CPU (fbgemm/x86); serve float32")
    work = copy.deepcopy(model).eval()
    if isinstance(work.scorer, TiedScorer):
        work.scorer = _untied(work.scorer)
    with warnings.catch_warnings():  # torch marks its eager quantization API for a move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(work, QUANTIZED, dtype=torch.qint8)


def _untied(scorer: TiedScorer) -> nn.Linear:
    weight = scorer.weight.detach()
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(scorer.bias.detach())
    return linear


def is_int8(model: nn.Module) -> bool:
    """Whether :func:`int8_for_serving` made ``model``."""
    return any(hasattr(module, "_packed_params") for module in model.modules())
