"""SASRec: causal self-attention over the user's sequence (Kang & McAuley, 2018), post-LN as in RecBole.

Attention is written from ``nn.Linear`` projections and ``F.scaled_dot_product_attention`` rather than
``nn.MultiheadAttention``, whose causal mask Opacus cannot handle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedseqrec.models.base import ModelConfig, SeqBatch, SequentialRecommender, positions_from_end


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """Every position's output, or with ``last`` (B,) only that position's of each sequence (B, 1, H)."""
        b, t, h = x.shape

        def split(proj: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
            return proj(inputs).view(b, inputs.shape[1], self.heads, h // self.heads).transpose(1, 2)

        keys, values = split(self.key, x), split(self.value, x)
        if last is None:
            # Causal masking alone is enough with right padding: real positions never see the padding after them.
            attended = F.scaled_dot_product_attention(
                split(self.query, x), keys, values, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            seen = (torch.arange(t, device=x.device) <= last[:, None]).view(b, 1, 1, t)
            attended = F.scaled_dot_product_attention(split(self.query, _at(x, last)), keys, values, attn_mask=seen)
        return self.out(attended.transpose(1, 2).reshape(b, -1, h))


class LowPassFilter(nn.Module):
    """BSARec's inductive bias (Shin et al., AAAI 2024): a sequence's low-frequency part, and its high-frequency
    part (what remains) rescaled by a learnt β² per channel. ``causal``: a position's low part is the mean of the
    last ``width`` states up to it, so that every position of a window can be a target. ``fourier``: BSARec's own,
    the ``width // 2 + 1`` lowest Fourier components of the sequence as if left-padded with zeros to ``max_len``
    (so a sequence's filter never depends on its batch); it reads later positions (``--window prefixes``). β is a
    one-row embedding looked up once a sequence, so that Opacus sees a layer it can clip per user."""

    def __init__(self, hidden: int, width: int, dropout: float, fourier_len: int | None = None):
        super().__init__()
        self.width = width
        self.beta = nn.Embedding(1, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        if fourier_len is not None:  # not saved: a function of the options
            self.register_buffer("projections", fourier_projections(fourier_len, width // 2 + 1), persistent=False)

    def forward(self, x: torch.Tensor, last: torch.Tensor | None = None, lengths: torch.Tensor | None = None):
        if hasattr(self, "projections"):
            t = x.shape[1]
            low = torch.bmm(self.projections[lengths, :t, :t], x)
        else:
            low = causal_mean(x, self.width)
        if last is not None:
            x, low = _at(x, last), _at(low, last)
        beta = self.beta(torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device))  # (B, 1, H)
        return self.norm(x + self.dropout(low + beta**2 * (x - low)))


def causal_mean(x: torch.Tensor, width: int) -> torch.Tensor:
    """Each position's mean of the ``width`` states ending at it (fewer at the start). With right padding a real
    position never averages padding, which comes after it."""
    total = torch.cumsum(x, dim=1)
    before = F.pad(total, (0, 0, width, 0))[:, : x.shape[1]]
    count = torch.arange(1, x.shape[1] + 1, device=x.device).clamp(max=width).view(1, -1, 1)
    return (total - before) / count


def fourier_projections(width: int, keep: int) -> torch.Tensor:
    """(width + 1, width, width): entry n projects a sequence of n states, right-aligned in a zero-padded window of
    ``width``, onto the window's ``keep`` lowest frequencies (rfft, zeroed above ``keep``, irfft), and returns it in
    the first n rows and columns (our batches are right-padded)."""
    spectrum = torch.fft.rfft(torch.eye(width, dtype=torch.float64), dim=0, norm="ortho")
    spectrum[keep:] = 0
    window = torch.fft.irfft(spectrum, n=width, dim=0, norm="ortho")
    out = torch.zeros(width + 1, width, width, dtype=torch.float64)
    for n in range(1, width + 1):
        out[n, :n, :n] = window[width - n :, width - n :]
    return out.float()


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mix = cfg.low_pass
        fourier = cfg.max_len if cfg.low_pass_filter == "fourier" else None
        self.low_pass = LowPassFilter(cfg.hidden, cfg.low_pass_width, cfg.dropout, fourier) if cfg.low_pass else None
        self.attention = CausalSelfAttention(cfg.hidden, cfg.heads, cfg.dropout)
        self.attention_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.feed_forward = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.inner), nn.GELU(), nn.Linear(cfg.inner, cfg.hidden), nn.Dropout(cfg.dropout)
        )
        self.feed_forward_norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, last: torch.Tensor | None = None, lengths: torch.Tensor | None = None):
        residual = x if last is None else _at(x, last)
        mixed = self.attention_norm(residual + self.dropout(self.attention(x, last)))
        if self.low_pass is not None:
            mixed = self.mix * self.low_pass(x, last, lengths) + (1 - self.mix) * mixed
        return self.feed_forward_norm(mixed + self.feed_forward(mixed))


class SASRec(SequentialRecommender):
    name = "sasrec"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.layers))
        self.apply(_init_weights)

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        x = self._embedded(batch)
        for block in self.blocks:
            x = block(x, lengths=batch.lengths)
        return x

    def last_hidden(self, batch: SeqBatch) -> torch.Tensor:
        """The output after each sequence's last item. The last block computes that position alone (its keys and
        values still read every position): the same figures as :meth:`forward`, for much less work when ranking."""
        x = self._embedded(batch)
        for block in self.blocks[:-1]:
            x = block(x, lengths=batch.lengths)
        return self.blocks[-1](x, batch.lengths - 1, batch.lengths).squeeze(1)

    def _embedded(self, batch: SeqBatch) -> torch.Tensor:
        b, t = batch.items.shape
        # Batch-sized, contiguous position ids: Opacus needs a per-sample input for every embedding.
        if self.cfg.positions == "from-end":
            positions = positions_from_end(batch)
        else:
            positions = torch.arange(t, device=batch.items.device).repeat(b, 1)
        return self.dropout(self.norm(self.embed(batch) + self.position_embedding(positions)))


def _at(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Each sequence's vector at position ``last`` (B,), as (B, 1, H)."""
    return x.gather(1, last.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))


def _init_weights(module: nn.Module) -> None:
    # RecBole's initialisation: normal(0, 0.02) weights, zero biases, unit layer norms.
    if isinstance(module, nn.Linear | nn.Embedding):
        module.weight.data.normal_(0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight.data[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
    if isinstance(module, LowPassFilter):
        module.beta.weight.data.fill_(1.0)  # β² = 1: the filter starts as the identity and learns its mix
