"""The ESMM loss (Ma et al., SIGIR 2018): click and conversion learnt over every impression.

A conversion model trained only on clicked impressions learns from a biased sample (the clicked ones) and is used on
all of them; ESMM instead models pCTCVR = pCTR · pCVR and trains both heads on every impression:

    L = BCE(pCTR, click) + BCE(pCTR · pCVR, click ∧ purchase),

so pCVR = P(purchase | click) is never fit to clicked impressions alone. Purchases are rare (a few per cent of
clicks): ``pos_weight`` weighs the positive term of each part (1: none), the usual remedy, stated with the results.
Computed from logits in log space, so that tiny products stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def esmm_terms(
    ctr_logits: torch.Tensor,
    cvr_logits: torch.Tensor,
    clicked: torch.Tensor,
    purchased: torch.Tensor,
    pos_weight: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """Each impression's CTR plus CTCVR cross-entropy (the shape of the logits)."""
    click = clicked.float()
    conversion = (clicked.bool() & purchased.bool()).float()
    ctr = F.binary_cross_entropy_with_logits(
        ctr_logits, click, pos_weight=torch.tensor(pos_weight[0]), reduction="none"
    )
    log_p = F.logsigmoid(ctr_logits) + F.logsigmoid(cvr_logits)  # log pCTCVR
    log_not = _log1mexp(log_p)  # log(1 − pCTCVR)
    return ctr - (pos_weight[1] * conversion * log_p + (1 - conversion) * log_not)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x < 0, accurate near 0 and far below it (Mächler, 2012)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
