"""GRU4Rec and its LSTM twin: an embedding, a recurrent layer, dropout, and the item scorer.

They use ``nn.GRU`` / ``nn.LSTM``; for DP-SGD the privacy layer swaps in Opacus' ``DPGRU`` / ``DPLSTM``
(same state-dict names), so plain training keeps the fast fused kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from fedseqrec.models.base import ModelConfig, SeqBatch, SequentialRecommender


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"
    cell = nn.GRU
    recurrent = True
    ghost_clipping_safe = False  # the cell runs once per time step: see SequentialRecommender

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.rnn = self.cell(
            cfg.hidden,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.output_dropout = nn.Dropout(cfg.dropout)

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        # Right padding: a position's state depends only on the events before it, never on padding.
        output, _ = self.rnn(self.input_dropout(self.embed(batch)))
        return self.output_dropout(output)


class LSTMRec(GRU4Rec):
    name = "lstm"
    cell = nn.LSTM
