"""What the ad models of ``--task ctr`` share: labels from the impression events, the ESMM loss per user, and
scoring a slate of ads after a history.

Impressions are events of the window (their event ids in ``ModelConfig.ad_events``: shown, clicked, clicked and
bought). In training every impression of a user's window is a target, predicted from the behaviour before it —
never from earlier impressions, whose labels would leak those of the same slate; each user's impressions are
averaged into one term (the privacy unit of DP-SGD). A subclass gives ``_logits(history, ads, at)``: the (click,
conversion) logits of ads shown at positions ``at`` of a history (``ads`` None: the history's own items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedseqrec.errors import UserError
from fedseqrec.models.base import ModelConfig, SeqBatch, SequentialRecommender
from fedseqrec.models.esmm import esmm_terms


class AdModel(SequentialRecommender):
    ghost_clipping_safe = False  # the loss is no criterion over item scores: Opacus' hooks, not ghost clipping

    def __init__(self, cfg: ModelConfig):
        if len(cfg.ad_events) != 3 or cfg.ad_events[0] < 0:
            raise UserError(f"{self.name} predicts clicks on shown ads, and this data has no impressions (--task ctr)")
        super().__init__(cfg)
        del self.scorer  # no item ranking: two heads instead
        self.register_buffer("ad_events", torch.tensor(cfg.ad_events), persistent=False)
        # the items' words (token ids by item id, 0-padded): catalogue text from the data (attach_words)
        self.register_buffer("item_tokens", torch.zeros(cfg.n_items + 1, 1, dtype=torch.long), persistent=False)
        # Platt scaling of each head's logit (rows: click, conversion; columns: scale, shift), fitted after training
        # on validation slates (fit_calibration) and saved with the weights; never trained by gradient steps.
        self.register_buffer("calibration", torch.tensor([[1.0, 0.0], [1.0, 0.0]]))

    def attach_words(self, item_tokens) -> None:
        """The items' words (``SequenceData.tokens.items``)."""
        self.item_tokens = torch.as_tensor(item_tokens, dtype=torch.long)

    def _logits(self, history: SeqBatch, ads: torch.Tensor | None, at: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def visible(self, history: SeqBatch, at: torch.Tensor) -> torch.Tensor:
        """(B, K, T): which events of the history each ad sees — the behaviour (no impression) before it."""
        t = history.items.shape[1]
        behaviour = (history.items > 0) & ~(history.events.unsqueeze(-1) == self.ad_events).any(-1)
        before = torch.arange(t, device=at.device).view(1, 1, -1) < at.unsqueeze(-1)
        return before & behaviour.unsqueeze(1)

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        return self.embed(batch)

    def training_view(self, batch: SeqBatch) -> SeqBatch:
        """The window as it is; ``targets``: 1 shown, 2 clicked, 3 clicked and bought at impressions, else 0."""
        targets = torch.zeros_like(batch.items)
        for code, event in enumerate(self.cfg.ad_events, start=1):
            targets = torch.where(batch.events == event, code, targets)
        return SeqBatch(batch.items, batch.events, batch.gaps, batch.lengths, targets * (batch.items > 0))

    def loss_on_view(self, batch: SeqBatch, criterion=None) -> torch.Tensor:
        """ESMM over every impression of each window, averaged per user, then over users."""
        t = batch.items.shape[1]
        positions = torch.arange(t, device=batch.items.device).expand_as(batch.items)
        logits = self._logits(batch, None, positions)  # every position as a candidate at its own place
        terms = esmm_terms(logits[..., 0], logits[..., 1], batch.targets >= 2, batch.targets == 3)
        shown = (batch.targets > 0).float()
        per_user = (terms * shown).sum(1) / shown.sum(1).clamp(min=1)
        return per_user.mean()

    def packed_loss(self, batch: SeqBatch) -> torch.Tensor:
        return self.calculate_loss(batch)

    def predict_ads(self, history: SeqBatch, ads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pCTR, pCTCVR) of each ad (B, K) shown after the whole ``history``."""
        logits = self._shown_after(history, ads) * self.calibration[:, 0] + self.calibration[:, 1]
        p_click = torch.sigmoid(logits[..., 0])
        return p_click, p_click * torch.sigmoid(logits[..., 1])

    def _shown_after(self, history: SeqBatch, ads: torch.Tensor) -> torch.Tensor:
        """Uncalibrated (click, conversion) logits of ads (B, K) shown after the whole history: one empty position
        appended, where every ad sits."""
        at = history.lengths.unsqueeze(1).expand_as(ads)
        padded = SeqBatch(*(F.pad(x, (0, 1)) for x in (history.items, history.events, history.gaps)), history.lengths)
        return self._logits(padded, ads, at)

    def fit_calibration(self, slates) -> dict:
        """Platt scaling on held-out slates (``SlateBatch`` es): the scale and shift of each head's logit that
        minimise the ESMM loss there, the network fixed. Predictions deep models make after early stopping are
        often too spread out; each head's ranking is kept (a positive scale)."""
        self.eval()
        logits, clicked, bought = [], [], []
        with torch.no_grad():
            for chunk in slates:
                shown = chunk.ads > 0
                device = self.calibration.device
                logits.append(self._shown_after(chunk.batch.to(device), chunk.ads.to(device))[shown.to(device)].cpu())
                clicked.append(torch.from_numpy(chunk.clicked)[shown])
                bought.append(torch.from_numpy(chunk.bought)[shown])
        raw, clicked, bought = torch.cat(logits), torch.cat(clicked), torch.cat(bought)
        log_scale = torch.zeros(2, requires_grad=True)  # scales stay positive: the heads' rankings are kept
        shift = torch.zeros(2, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_scale, shift], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            scaled = raw * log_scale.exp() + shift
            loss = esmm_terms(scaled[:, 0], scaled[:, 1], clicked, bought).mean()
            loss.backward()
            return loss

        optimizer.step(closure)
        fitted = torch.stack([log_scale.exp(), shift], dim=1).detach()
        if torch.isfinite(fitted).all():
            self.calibration.copy_(fitted)
        return {"click": fitted[0].tolist(), "conversion": fitted[1].tolist(), "impressions": len(raw)}

    def full_sort_predict(self, batch: SeqBatch) -> torch.Tensor:
        raise UserError(f"{self.name} scores shown ads (--task ctr), not the next item of a ranking")
