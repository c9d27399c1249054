"""DIN-ESMM: click and conversion of a shown ad from the behaviour before it (``--task ctr``).

The ad attends to the user's earlier behaviour (target attention, as in DIN: Zhou et al., KDD 2018): each earlier
behaviour event is scored against the ad by an additive unit and a bilinear term, plus a learned bias for how far
back it lies; the weighted sum is the user's interest in this ad. An item is its own embedding plus the mean of its
text's words (the category features DIN uses), layer-normed. An MLP over (interest, ad, interest ⊙ ad, the last
behaviour event, last ⊙ ad) gives two logits: click (pCTR) and purchase after a click (pCVR), trained with ESMM on
every impression (``models/ads.py``). No re-weighting and no negative sampling: both would bias the probabilities
whose calibration is measured; purchases are rare (a few per cent of clicks), so the conversion head starts at a
5 % rate instead of 50 %. Like most deep CTR models it overfits after one or two passes over the data ("one-epoch
overfitting"): early stopping on validation AUC picks the epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedseqrec.models.ads import AdModel
from fedseqrec.models.base import ModelConfig, SeqBatch, _init_embedding

ATTENTION = 16  # width of the additive attention unit
CONVERSION_PRIOR = math.log(0.05 / 0.95)  # the conversion head's starting log-odds


class DINESMM(AdModel):
    name = "din-esmm"
    ghost_clipping_safe = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.hidden
        # An item is its own embedding plus the mean of its text's words (the shop's category and price band):
        # what DIN's category features give it, so that "the same category as the last view" needs no learning
        # of every item pair. The words come from the data when the model is built (attach_words).
        self.word_embedding = nn.Embedding(max(1, cfg.n_query_tokens) + 1, h, padding_idx=0)
        self.norm = nn.LayerNorm(h)  # unit-scale item vectors: their products are the MLP's inputs

        self.recency = nn.Embedding(cfg.max_len + 1, 1)
        self.unit_history, self.unit_ad = nn.Linear(h, ATTENTION), nn.Linear(h, ATTENTION, bias=False)
        self.unit_out = nn.Linear(ATTENTION, 1)
        self.bilinear = nn.Linear(h, h, bias=False)
        self.mlp = nn.Sequential(nn.Linear(5 * h, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 2))
        _init_embedding(self.recency)
        _init_embedding(self.word_embedding)
        with torch.no_grad():
            self.mlp[-1].bias.copy_(torch.tensor([0.0, CONVERSION_PRIOR]))

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        return self._items(batch.items) + self._context(batch)

    def _items(self, items: torch.Tensor) -> torch.Tensor:
        words = self.item_tokens[items]  # (..., L)
        count = (words > 0).sum(-1, keepdim=True).clamp(min=1)
        return self.item_embedding(items) + self.word_embedding(words).sum(-2) / count

    def _context(self, batch: SeqBatch) -> torch.Tensor:
        x = torch.zeros(1, device=batch.items.device)
        if self.use_events:
            x = x + self.event_embedding(batch.events)
        if self.use_gaps:
            x = x + self.gap_embedding(batch.gaps)
        return x

    def _logits(self, history: SeqBatch, ads: torch.Tensor | None, at: torch.Tensor) -> torch.Tensor:
        """(click, conversion) logits (B, K, 2) of ads (B, K) shown at positions ``at`` (B, K) of ``history``
        (``ads`` None: the history's own items at their own positions); each sees the behaviour before it. Every
        embedding is looked up once per call, as Opacus' per-sample hooks want."""
        b, t = history.items.shape
        if ads is None:
            items = self.norm(self._items(history.items))
            ad, ads = items, history.items
        else:
            items = self.norm(self._items(torch.cat([history.items, ads], dim=1)))
            items, ad = items[:, :t], items[:, t:]
        events = items + self._context(history)  # (B, T, H)
        visible = self.visible(history, at)
        unit = torch.tanh(self.unit_history(events).unsqueeze(1) + self.unit_ad(ad).unsqueeze(2))  # (B, K, T, A)
        scores = self.unit_out(unit.view(b, -1, unit.shape[-1])).view(b, ad.shape[1], t)
        scores = scores + self.bilinear(ad) @ events.transpose(1, 2) / math.sqrt(events.shape[-1])
        back = (at.unsqueeze(-1) - torch.arange(t, device=ads.device).view(1, 1, -1)).clamp(0, self.cfg.max_len)
        scores = scores + self.recency(back).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~visible, -1e9), dim=-1) * visible.any(-1, keepdim=True)
        interest = weights @ events  # (B, K, H)
        last_at = (visible * torch.arange(1, t + 1, device=ads.device)).argmax(-1)  # the last visible event
        last = events.gather(1, last_at.unsqueeze(-1).expand(-1, -1, events.shape[-1])) * visible.any(-1, True)
        return self.mlp(torch.cat([interest, ad, interest * ad, last, last * ad], dim=-1))
