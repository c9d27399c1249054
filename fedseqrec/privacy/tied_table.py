"""Each user's clipped contribution for a model that scores items with its own item table (``--tie-items``, full
cross-entropy), without ever holding one user's gradient of the table.

The item table E (V rows) is most of the model and every user's gradient of it is dense — the softmax reaches every
row — so computing per-user gradients of everything (``torch.func.vmap``) writes U × V × H numbers for U users and
costs about seven plain training steps. The table's part of user u's gradient has two terms, both small in factors:

- through the scores: B = Gᵀ H, with G (T × V) the gradient of u's loss with respect to its scores (taken from the
  same backward pass, as the gradient of a zero offset added to the scores) and H (T × H) u's hidden states;
- through the input lookup: A = the rows X (T × H) of u's items, their gradients added row by row into the table.

So ‖A + B‖² = ‖A‖² + ‖B‖² + 2⟨A, B⟩ is computed from T × T matrices alone:
‖B‖² = Σ (G Gᵀ) ∘ (H Hᵀ), ‖A‖² = Σ [item_t = item_t′] ⟨dX_t, dX_t′⟩ and ⟨A, B⟩ = Σ G[t, item_t′] ⟨H_t, dX_t′⟩.
The rest of the model (a few percent of the parameters) and dX come from ``vmap`` with the table held fixed. With
each user's exact norm the clip factors f_u follow, and the sum Σ f_u (A_u + B_u) is one scatter and one matrix
product over every user at once. The result equals the generic path's (a test checks it against plain autograd).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fedseqrec.models.base import SeqBatch, SequentialRecommender, TiedScorer

TABLE, BIAS = "model.item_embedding.weight", "model.scorer.bias"  # as the per-user wrapper names them


def applies(model: SequentialRecommender, trained: dict, steps: int, clipping: str) -> bool:
    """Whether the factored path computes this model's contributions: a tied, trained table under full
    cross-entropy, one step, one clipping norm for the whole contribution."""
    return (
        steps == 1
        and clipping == "flat"
        and model.cfg.loss == "ce"
        and isinstance(getattr(model, "scorer", None), TiedScorer)
        and type(model).item_scores is SequentialRecommender.item_scores
        and TABLE in trained
        and BIAS in trained
    )


def clipped_chunk(
    model: SequentialRecommender,
    trained: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    view: tuple[torch.Tensor, ...],
    width: int,
    clip: float,
    masks: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(Σ over the chunk's users of their clipped contributions, by the wrapper's names; each user's norm before
    clipping; each user's loss). ``view``: the chunk's (items, events, gaps, lengths, targets), cut to its width;
    ``masks``: the rows of each table that train (``--item-rows``)."""
    items, events, gaps, lengths, targets = view
    table, bias = trained[TABLE], trained[BIAS]
    scores = model.scorer.n_scores
    body = {n: p for n, p in trained.items() if n not in (TABLE, BIAS)}
    held = {n[len("model.") :]: t for n, t in {**fixed, TABLE: table, BIAS: bias}.items()}
    smoothing = model.cfg.label_smoothing

    def user_loss(body_params, vectors, offset, items, events, gaps, lengths, targets):
        # ``offset`` (zeros) is added to the scores so that its gradient is the scores' gradient G, from the same
        # backward pass as the rest
        batch = SeqBatch(items[None], events[None], gaps[None], lengths[None], item_vectors=vectors[None])
        params = {n[len("model.") :]: p for n, p in body_params.items()}
        hidden = functional_call(model, (params, held), (batch,))[0]
        logits = F.linear(hidden, table[:scores], bias) + offset
        per_token = F.cross_entropy(logits, targets, ignore_index=0, reduction="none", label_smoothing=smoothing)
        return per_token.sum() / width, hidden.detach()

    step = vmap(
        grad_and_value(user_loss, argnums=(0, 1, 2), has_aux=True),
        in_dims=(None, 0, None, 0, 0, 0, 0, 0),
        randomness="different",
    )
    offset = torch.zeros(items.shape[1], scores, dtype=table.dtype, device=table.device)
    with warnings.catch_warnings():  # "no batching rule" for CPU flash attention: a slower loop, still exact
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        (body_grads, vector_grads, score_grads), (losses, hidden) = step(
            body, table[items], offset, items, events, gaps, lengths, targets
        )
    bias_grads = score_grads.sum(dim=1)  # (U, V)
    # The lookup's gradient reaches neither the padding row (padding_idx) nor rows that do not train.
    looked_up = (items != 0).to(vector_grads.dtype)
    if TABLE in masks:  # --item-rows: the other rows get nothing (their scores' gradients are dropped too)
        rows = masks[TABLE]
        score_grads.mul_(rows[:scores])
        bias_grads.mul_(masks.get(BIAS, rows[:scores]))
        looked_up = looked_up * rows[items]
    vector_grads = vector_grads * looked_up[..., None]
    score_grads_table = score_grads
    squares = sum((g.reshape(g.shape[0], -1) ** 2).sum(dim=1) for g in body_grads.values())
    squares = squares + (bias_grads**2).sum(dim=1) + _table_squares(items, hidden, vector_grads, score_grads_table)
    norms = squares.clamp(min=0).sqrt()
    factors = (clip / (norms + 1e-12)).clamp(max=1.0)
    total = {n: torch.einsum("b,b...->...", factors, g) for n, g in body_grads.items()}
    total[BIAS] = factors @ bias_grads
    total[TABLE] = _table_sum(table, items, hidden, vector_grads, score_grads_table, factors)
    return total, norms, losses


def _table_squares(items, hidden, vector_grads, score_grads) -> torch.Tensor:
    """‖A + B‖² per user, from T × T matrices (see the module's docstring)."""
    through_scores = ((score_grads @ score_grads.transpose(1, 2)) * (hidden @ hidden.transpose(1, 2))).sum((1, 2))
    same_row = (items[:, :, None] == items[:, None, :]).to(hidden.dtype)
    through_lookup = (same_row * (vector_grads @ vector_grads.transpose(1, 2))).sum((1, 2))
    scores = score_grads.shape[-1]
    at_items = items.clamp(max=scores - 1)[:, None, :].expand(-1, items.shape[1], -1)
    crossing = score_grads.gather(2, at_items) * (items < scores)[:, None, :]  # G[t, item_t′]
    cross = (crossing * (hidden @ vector_grads.transpose(1, 2))).sum((1, 2))
    return through_lookup + through_scores + 2 * cross


def _table_sum(table, items, hidden, vector_grads, score_grads, factors) -> torch.Tensor:
    """Σ_u f_u (A_u + B_u): the lookups' gradients scattered into their rows, and one product for the scores."""
    total = torch.zeros_like(table)
    total.index_add_(0, items.reshape(-1), (factors[:, None, None] * vector_grads).reshape(-1, table.shape[1]))
    weighted = (factors[:, None, None] * score_grads).reshape(-1, score_grads.shape[-1])
    total[: score_grads.shape[-1]] += weighted.T @ hidden.reshape(-1, hidden.shape[-1])
    return total
