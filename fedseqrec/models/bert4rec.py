"""BERT4Rec: a bidirectional Transformer trained to fill in masked items (Sun et al., 2019).

The encoder is Hugging Face's ``BertModel`` built from a ``BertConfig`` (no downloaded weights). Item,
event and time-gap embeddings are ours and enter as ``inputs_embeds``; BERT's own word-embedding table is
never used, so it is one frozen row. Position and token-type ids are passed batch-sized and contiguous,
which Opacus needs to compute per-sample gradients of those embeddings.
"""

from __future__ import annotations

import math

import torch
from transformers import BertConfig, BertModel

from fedseqrec.models.base import ModelConfig, SeqBatch, SequentialRecommender, positions_from_end


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"
    extra_tokens = 1  # the [MASK] item, id n_items + 1
    # A bidirectional model sees the events around a masked one: a cart or a purchase next to it almost always
    # names the masked item (the same item, carted or bought), so the cloze task is solved by copying a
    # neighbour — which the appended [MASK] of prediction never has. Without event types it must learn order.
    uses_event_types = False
    revision = 2
    revision_note = "positions are counted from the last item since revision 2 (from the first before)"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.mask_id = cfg.n_items + 1
        config = BertConfig(
            vocab_size=1,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.inner,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=cfg.max_len + 1,  # training windows hold max_len + 1 events
            type_vocab_size=1,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        # BERT's masked-LM head transform (dense, GELU, LayerNorm) before the item scores, as in the BERT4Rec
        # authors' code and RecBole: the encoder's output is a LayerNorm'd state, not an item embedding.
        self.head = torch.nn.Sequential(
            torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.GELU(), torch.nn.LayerNorm(cfg.hidden, eps=1e-12)
        )

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        # Counted from the end: the slot to fill at prediction (the appended [MASK]) is always position 0; counted
        # from the first item it would sit at a different position in every sequence, and a bidirectional encoder
        # could only tell it is the last by comparing its position with everyone else's.
        positions = positions_from_end(batch)
        output = self.bert(
            inputs_embeds=self.embed(batch),
            attention_mask=self._padding_mask(batch.items),
            position_ids=positions,
            token_type_ids=torch.zeros_like(batch.items),
        )
        return self.head(output.last_hidden_state)

    @staticmethod
    def _padding_mask(items: torch.Tensor) -> torch.Tensor:
        """Additive (B, 1, 1, T) mask: 0 where a key is an item, the dtype's minimum where it is padding. Given
        ready in 4-D, Hugging Face uses it as it is instead of testing the 2-D mask's values (``mask.all()``), a
        data-dependent branch that ``torch.func.vmap`` (per-user gradients) cannot take."""
        blocked = torch.finfo(torch.float32).min
        return torch.zeros(items.shape, dtype=torch.float32, device=items.device).masked_fill(items == 0, blocked)[
            :, None, None, :
        ]

    def training_view(self, batch: SeqBatch) -> SeqBatch:
        """Cloze: each real item is masked with probability ``mask_ratio`` and becomes a target; in half of the
        sequences the last item is masked too, which is what prediction asks for (as in the BERT4Rec paper)."""
        real = batch.items != 0
        masked = (torch.rand(batch.items.shape, device=batch.items.device) < self.cfg.mask_ratio) & real
        last = torch.rand(batch.items.shape[0], device=batch.items.device) < 0.5
        rows = torch.arange(batch.items.shape[0], device=batch.items.device)
        masked[rows[last], batch.lengths[last] - 1] = True
        return SeqBatch(
            items=batch.items.masked_fill(masked, self.mask_id),
            events=batch.events.masked_fill(masked, 0),  # what the masked event was is unknown at prediction
            gaps=batch.gaps.masked_fill(masked, 1),
            lengths=batch.lengths,
            targets=batch.items.masked_fill(~masked, 0),
        )

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        """Append [MASK] after each sequence and score the items for it."""
        b = batch.items.shape[0]
        rows = torch.arange(b, device=batch.items.device)

        def append(x: torch.Tensor, value: int) -> torch.Tensor:
            out = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
            out[rows, batch.lengths] = value
            return out

        extended = SeqBatch(
            append(batch.items, self.mask_id), append(batch.events, 0), append(batch.gaps, 1), batch.lengths + 1
        )
        scores = self.scorer(self.last_hidden(extended))
        scores[:, 0] = -math.inf
        return scores
