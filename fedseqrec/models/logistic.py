"""``lr``: logistic regression on what the whole history says, in no order — the non-sequential baseline of
``--task ctr``.

Features of an ad shown to a user: the ad itself (one weight per item: its popularity with clicks), the words of its
text (the shop's category and price band), and, per word, the share of the user's earlier behaviour events whose
item has that word too (the user's taste for the ad's category, over the whole history, every event alike). Two
linear heads, click and purchase-after-click, trained with the same ESMM objective as ``din-esmm``, so that the two
differ only in what they read from the history: a bag of it, or its order.
"""

from __future__ import annotations

import torch
from torch import nn

from fedseqrec.models.ads import AdModel
from fedseqrec.models.base import ModelConfig, SeqBatch
from fedseqrec.models.din import CONVERSION_PRIOR


class AdLogistic(AdModel):
    name = "lr"
    uses_event_types = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        for unused in ("item_embedding", "event_embedding", "gap_embedding"):  # no embeddings: weights on features
            if hasattr(self, unused):
                delattr(self, unused)
        words = max(1, cfg.n_query_tokens) + 1
        self.item_weight = nn.Embedding(cfg.n_items + 1, 2, padding_idx=0)
        self.word_weight = nn.Linear(words, 2)
        self.taste_weight = nn.Linear(words, 2, bias=False)
        for module in (self.item_weight, self.word_weight, self.taste_weight):
            nn.init.zeros_(module.weight)
        with torch.no_grad():
            self.word_weight.bias.copy_(torch.tensor([0.0, CONVERSION_PRIOR]))

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        return self._bags(batch.items)

    def _bags(self, items: torch.Tensor) -> torch.Tensor:
        """Each item's words as a 0/1 vector over the vocabulary (column 0: no word)."""
        tokens = self.item_tokens[items]
        bags = torch.zeros(*items.shape, self.word_weight.in_features, device=items.device)
        bags = bags.scatter(-1, tokens, 1.0)
        return bags * (torch.arange(bags.shape[-1], device=items.device) > 0)

    def _logits(self, history: SeqBatch, ads: torch.Tensor | None, at: torch.Tensor) -> torch.Tensor:
        ads = history.items if ads is None else ads
        visible = self.visible(history, at).float()  # (B, K, T)
        taste = visible @ self._bags(history.items) / visible.sum(-1, keepdim=True).clamp(min=1)  # (B, K, words)
        bags = self._bags(ads)
        return self.item_weight(ads) + self.word_weight(bags) + self.taste_weight(taste * bags)
