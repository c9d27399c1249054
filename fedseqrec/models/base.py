"""What every sequence recommender shares: its configuration, its batch, its loss and the item scorer.

A model maps a batch of right-padded user sequences to hidden states (``forward``), scores all items at
every position through a module call (an ``nn.Linear``: Opacus only sees parameters used inside module calls),
trains with ``calculate_loss`` and ranks the next item with ``full_sort_predict``, as RecBole's models do.

One training example is one user's (truncated) sequence with every position a target; the loss is one term
per sequence (see ``SequenceLoss``). That unit is the privacy unit of DP-SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedseqrec.models.config import ModelConfig
from fedseqrec.models.fused_ce import fused_cross_entropy_sum

N_GAP_BUCKETS = 34  # 0 = padding, 1 = unknown gap (first event), 2.. = 2 + floor(log2(1 + seconds)), capped


@dataclass
class SeqBatch:
    """Right-padded sequences (padding id 0). ``targets[b, t]`` is the item to predict after position t."""

    items: torch.Tensor  # (B, T) long
    events: torch.Tensor  # (B, T) long
    gaps: torch.Tensor  # (B, T) long time-gap buckets
    lengths: torch.Tensor  # (B,) long, >= 1
    targets: torch.Tensor | None = None  # (B, T) long, 0 = no target
    # The words of searches (token ids, 0 = padding; data/text.py). ``queries[b, t]``: the query of event t itself
    # (raw windows); ``target_queries[b, t]``: the query known when the item after position t is predicted (what
    # the search that found it asked; zeros when that event was no search). Only query-aware models read them.
    queries: torch.Tensor | None = None  # (B, T, L) long
    target_queries: torch.Tensor | None = None  # (B, T, L) long
    # The item rows of ``items`` already looked up (B, T, H): per-user clipping differentiates them apart from the
    # table (privacy.tied_table); ``None``: looked up by the model.
    item_vectors: torch.Tensor | None = None

    def to(self, device: torch.device) -> SeqBatch:
        """The batch on ``device`` (itself when it is there already: the CPU's common case costs nothing)."""
        if self.items.device == device:
            return self
        moved = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return SeqBatch(**{f: None if t is None else t.to(device, non_blocking=True) for f, t in moved.items()})


def _init_embedding(table: nn.Embedding, std: float = 0.02) -> None:
    """N(0, 0.02²) as RecBole and Hugging Face initialise every embedding (torch's default is N(0, 1)): at unit
    scale the item vectors (norm ≈ 8 at hidden 64) drown the Transformers' position embeddings, so BERT4Rec's
    masked positions look alike whatever their context, and a tied item table would start with scores of
    norm ≈ 8 · ‖h‖. Padding stays zero."""
    with torch.no_grad():
        table.weight.normal_(0.0, std)
        if table.padding_idx is not None:
            table.weight[table.padding_idx].zero_()


def gap_buckets(seconds: torch.Tensor) -> torch.Tensor:
    """Log2 buckets of the gap before each event (negative = unknown)."""
    buckets = 2 + torch.floor(torch.log2(1.0 + seconds.clamp(min=0))).long()
    return torch.where(seconds < 0, torch.ones_like(buckets), buckets.clamp(max=N_GAP_BUCKETS - 1))


def positions_from_end(batch: SeqBatch) -> torch.Tensor:
    """(B, T) position ids counted back from each sequence's last item (0), as left-padded windows have them: the
    slot after the last item is always the same position, and every item's position is how recent it is. Padding
    gets 0 too: it is never attended to and never a target."""
    steps = torch.arange(batch.items.shape[1], device=batch.items.device)
    return (batch.lengths[:, None] - 1 - steps).clamp(min=0)


class SequenceLoss(nn.Module):
    """Cross-entropy summed over a sequence's target positions and divided by the window width, averaged over
    the batch: one term per user (the privacy unit), in which each target counts the same, as in RecBole where
    every prefix is a sample.

    Called as ``loss(logits_flat, targets_flat, shape=logits.shape)``, the call Opacus' ghost-clipping
    criterion makes. Under ghost clipping Opacus sets ``reduction = "none"`` and reduces the per-token losses
    itself: with ``loss_reduction="mean"`` and no ``ignore_index`` attribute on the criterion it takes the mean
    over the window's positions (padding contributes 0), the same per-user loss as here — so DP-SGD and plain
    training optimise the same objective.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, shape: torch.Size | None = None) -> torch.Tensor:
        per_token = F.cross_entropy(
            logits, targets, ignore_index=0, reduction="none", label_smoothing=self.label_smoothing
        )
        if self.reduction == "none":
            return per_token
        return per_token.view(shape[0], shape[1]).mean(dim=1).mean()


def _cut(tensor: torch.Tensor | None, width: int) -> torch.Tensor | None:
    return None if tensor is None else tensor[:, :width]


class TiedScorer(nn.Module):
    """Item scores from the item embedding table itself (input and output embeddings tied) plus a bias of its own.

    The table is held outside the module tree, so its weight stays the embedding's alone (once in the state dict,
    swapped with it by ``torch.func.functional_call``). Opacus' per-sample hooks would see only the embedding's
    own use of it: client-local DP-SGD refuses tied models (``privacy.compat``)."""

    def __init__(self, embedding: nn.Embedding, n_scores: int):
        super().__init__()
        self._table = (embedding,)
        self.n_scores = n_scores
        self.bias = nn.Parameter(torch.zeros(n_scores))

    @property
    def weight(self) -> torch.Tensor:
        return self._table[0].weight[: self.n_scores]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)


class SequentialRecommender(nn.Module):
    """Base class: embeddings with side information, the item scorer, loss and prediction."""

    name = "base"
    extra_tokens = 0  # ids after the items that the model uses itself (bert4rec's mask token)
    # Facts DP-SGD needs. Opacus' ghost clipping sees one call per layer and forward pass: correct for the
    # Transformers, wrong for a recurrent cell called once per time step (per-sample hooks are exact for both).
    recurrent = False
    ghost_clipping_safe = True
    uses_event_types = True  # side information: the event type of each position (view, cart, purchase, ...)
    reads_queries = False  # whether predictions read ``SeqBatch.target_queries`` (the query-aware model)
    # Raised when the same weights start to mean something else (checkpoints record it and refuse another).
    revision = 1
    revision_note = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.n_items + 1 + self.extra_tokens, cfg.hidden, padding_idx=0)
        self.use_events = cfg.side_info and cfg.n_events > 1 and self.uses_event_types
        self.use_gaps = cfg.side_info
        if self.use_events:
            self.event_embedding = nn.Embedding(cfg.n_events + 1, cfg.hidden, padding_idx=0)
        if self.use_gaps:
            self.gap_embedding = nn.Embedding(N_GAP_BUCKETS, cfg.hidden, padding_idx=0)
        # Scores of every item id (column 0, padding, included): a plain nn.Linear, so Opacus computes its
        # per-sample gradient norms with its fast Linear samplers (a subclass would fall back to functorch).
        self.scorer = (
            TiedScorer(self.item_embedding, cfg.n_items + 1)
            if cfg.tie_items
            else nn.Linear(cfg.hidden, cfg.n_items + 1)
        )
        for table in self._embedding_tables():
            _init_embedding(table)
        if cfg.freeze == "items":
            for table in (self.item_embedding, self.scorer):
                table.requires_grad_(False)

    def _embedding_tables(self) -> list[nn.Embedding]:
        return [
            m
            for m in (self.item_embedding, getattr(self, "event_embedding", None), getattr(self, "gap_embedding", None))
            if m is not None
        ]

    def embed(self, batch: SeqBatch) -> torch.Tensor:
        x = self.item_embedding(batch.items) if batch.item_vectors is None else batch.item_vectors
        if self.use_events:
            x = x + self.event_embedding(batch.events)
        if self.use_gaps:
            x = x + self.gap_embedding(batch.gaps)
        return x

    def forward(self, batch: SeqBatch) -> torch.Tensor:  # (B, T, H)
        raise NotImplementedError

    def training_view(self, batch: SeqBatch) -> SeqBatch:
        """Inputs and next-item targets from a window of events: every position predicts the one after it.
        The cloze model (bert4rec) masks items instead. A batch that has its targets already is a view (every
        prefix's last item: ``--window prefixes``)."""
        if batch.targets is not None:
            return batch
        return SeqBatch(
            items=batch.items[:, :-1].contiguous(),
            events=batch.events[:, :-1].contiguous(),
            gaps=batch.gaps[:, :-1].contiguous(),
            lengths=(batch.lengths - 1).clamp(min=1),
            targets=batch.items[:, 1:].contiguous(),
            target_queries=None if batch.queries is None else batch.queries[:, 1:].contiguous(),
        )

    def calculate_loss(self, batch: SeqBatch, criterion=None) -> torch.Tensor:
        return self.loss_on_view(self.training_view(batch), criterion)

    def loss_on_view(self, batch: SeqBatch, criterion=None) -> torch.Tensor:
        """The loss of inputs and targets already drawn by :meth:`training_view` (its random masks, for the cloze
        model, drawn outside: per-user gradients under ``torch.func.vmap`` cannot batch data-dependent indexing)."""
        hidden = self(batch)
        if self.cfg.loss == "sampled":
            return self._sampled_loss(hidden, batch.targets)
        logits = self.item_scores(hidden, batch.target_queries)
        criterion = criterion or SequenceLoss(self.cfg.label_smoothing)
        return criterion(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), shape=logits.shape)

    def packed_loss(self, batch: SeqBatch) -> torch.Tensor:
        """The loss of :meth:`calculate_loss` (no criterion), computed only where there is something to compute:
        the batch cut to its longest sequence and items scored only at target positions — on Amazon Beauty
        (8.9 events a user, windows of 50) most positions are padding. Each user's sum is still divided by the
        full window width, so the objective is the same. Plain training only: Opacus' per-sample hooks need every
        user's positions in the scorer's input, and the cut would change the per-user loss it clips."""
        view = self.training_view(batch)
        width, longest = view.items.shape[1], int(view.lengths.max())
        view = SeqBatch(
            *(x[:, :longest] for x in (view.items, view.events, view.gaps)),
            view.lengths,
            view.targets[:, :longest],
            target_queries=_cut(view.target_queries, longest),
        )
        at = view.targets != 0
        rows, last = torch.arange(len(view.lengths), device=at.device), view.lengths - 1
        if int(at.sum()) == len(rows) and bool(at[rows, last].all()):
            # Each sequence's one target after its last item (--window prefixes): the last position alone, which
            # SASRec's last block computes by itself.
            hidden, targets = self.last_hidden(view), view.targets[rows, last]
            asked = None if view.target_queries is None else view.target_queries[rows, last]
        else:
            hidden, targets = self(view)[at], view.targets[at]
            asked = None if view.target_queries is None else view.target_queries[at]
        if self.cfg.loss == "sampled":
            total = self._sampled_token_losses(hidden, targets).sum()
        elif self._scores_by_table() and not torch.is_autocast_enabled(hidden.device.type):
            scorer = self.scorer
            total = fused_cross_entropy_sum(hidden, scorer.weight, scorer.bias, targets, self.cfg.label_smoothing)
        else:
            total = F.cross_entropy(
                self.item_scores(hidden, asked), targets, reduction="sum", label_smoothing=self.cfg.label_smoothing
            )
        return total / (width * view.items.shape[0])

    def _scores_by_table(self) -> bool:
        """Whether the item scores are the scorer's table times the hidden state, nothing else (the fused loss)."""
        return type(self).item_scores is SequentialRecommender.item_scores and isinstance(
            self.scorer, nn.Linear | TiedScorer
        )

    def _sampled_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Softmax over the target and shared random negatives. It indexes the scorer's weight outside a module
        call, which Opacus would not clip, so it is refused under DP-SGD (see privacy.compat)."""
        per_token = self._sampled_token_losses(hidden, targets)
        return (per_token * (targets != 0)).sum(1).mean() / targets.shape[1]

    def _sampled_token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        negatives = torch.randint(1, self.cfg.n_items + 1, (self.cfg.negatives,), device=targets.device)
        positive = (hidden * self.scorer.weight[targets]).sum(-1) + self.scorer.bias[targets]
        negative = hidden @ self.scorer.weight[negatives].T + self.scorer.bias[negatives]
        negative = negative.masked_fill(negatives == targets.unsqueeze(-1), -math.inf)
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)
        return F.cross_entropy(
            logits.view(-1, logits.shape[-1]), torch.zeros_like(targets).view(-1), reduction="none"
        ).view(targets.shape)

    def last_hidden(self, batch: SeqBatch) -> torch.Tensor:
        hidden = self(batch)
        index = (batch.lengths - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)

    def item_table_keys(self) -> list[str]:
        """State-dict keys of the item embedding and the scorer, whose row i belongs to item i."""
        rows = self.cfg.n_items + 1
        return [
            key
            for key, value in self.state_dict().items()
            if key.split(".")[0] in ("item_embedding", "scorer") and value.dim() >= 1 and value.shape[0] >= rows
        ]

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        """Scores of every item for the position after each sequence; column 0 (padding) is -inf."""
        queries = batch.target_queries
        if queries is not None:
            queries = queries[torch.arange(len(batch.lengths)), batch.lengths - 1]
        scores = self.item_scores(self.last_hidden(batch), queries)
        scores[:, 0] = -math.inf
        return scores

    def item_scores(self, hidden: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Every item's score from hidden states (..., H); ``queries`` (..., L): the words asked there, which the
        query-aware model also scores the items' texts against."""
        return self.scorer(hidden)
