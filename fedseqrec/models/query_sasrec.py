"""Query-aware SASRec: ranking the results of a search for this customer (``--task search``).

The history says how the customer shops, the query what they want now. SASRec encodes the history as usual;
where the item to predict was found by a search, its query (the mean of its word embeddings) is fused with the
history's last state and with what the query recalls from the history: the query attends over the states after
each earlier event (target attention, as in DIN), with a learned bias for how far back the event lies. The
state after an event is SASRec's prediction of what follows that event, so recalling "the last laptop seen"
recalls what comes after it. Each item's score also gets a multiple (3, adjusted by learning) of the number of
query words found in the item's text (a lexical-match feature, as search rankers feed BM25 to a learned ranker); the
items' words come from the data when the model is built (:meth:`attach_words`; catalogue text, not user data).
Predictions without a query are plain SASRec's.

Every layer is an embedding, a linear layer or a layer norm called once per forward pass, so client-local DP-SGD
computes exact per-user gradients with Opacus' hooks and ghost clipping alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedseqrec.errors import UserError
from fedseqrec.models.base import ModelConfig, SeqBatch, SequentialRecommender
from fedseqrec.models.sasrec import SASRec, _init_weights

LEXICAL_PRIOR = 3.0  # logits per query word found in an item's text, before learning


class QuerySASRec(SASRec):
    name = "query-sasrec"
    reads_queries = True

    def __init__(self, cfg: ModelConfig):
        if cfg.n_query_tokens < 1:
            raise UserError(
                "query-sasrec reads search queries, and no event of this data has one (--task search "
                "with a log whose searches carry a `query` column)"
            )
        if cfg.loss == "sampled":
            raise UserError("query-sasrec scores every item's text against the query: use --loss ce")
        super().__init__(cfg)
        h = cfg.hidden
        self.word_embedding = nn.Embedding(cfg.n_query_tokens + 1, h, padding_idx=0)
        self.ask = nn.Linear(h, h)  # the query, as the attention's question
        self.key = nn.Linear(h, h)  # each earlier state, as what it answers to
        self.recency = nn.Embedding(cfg.max_len + 1, 1)  # a bias by distance back (index max_len: unseen)
        self.fuse = nn.Linear(3 * h, h)
        self.fuse_norm = nn.LayerNorm(h, eps=1e-12)
        for module in (self.word_embedding, self.ask, self.key, self.recency, self.fuse, self.fuse_norm):
            module.apply(_init_weights)
        # The score of a query word found in an item's text: LEXICAL_PRIOR · (1 + w), w learned from 0, so that
        # weight decay pulls it towards the prior, not towards ignoring the words. w is a one-entry embedding looked
        # up once per sequence: Opacus sees a per-sample input of size 1 (a linear layer over every item score
        # would make ghost clipping build a (positions · items)² matrix per user).
        self.lexical = nn.Embedding(1, 1)
        nn.init.zeros_(self.lexical.weight)
        # item_words[i, w] = 1 when word w is in item i's text: from the data (attach_words), never trained or sent
        self.register_buffer("item_words", torch.zeros(cfg.n_items + 1, cfg.n_query_tokens + 1), persistent=False)

    def attach_words(self, item_tokens: np.ndarray) -> None:
        """The items' words (token ids by item id, 0-padded; ``SequenceData.tokens.items``)."""
        table = torch.zeros_like(self.item_words)
        rows = torch.arange(len(item_tokens)).unsqueeze(1).expand(-1, item_tokens.shape[1])
        table[rows.reshape(-1), torch.from_numpy(item_tokens).reshape(-1)] = 1.0
        table[:, 0] = 0.0
        self.item_words.copy_(table)

    def item_scores(self, hidden: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.scorer(hidden)
        if queries is None:
            return scores
        asked = torch.zeros(*queries.shape[:-1], self.item_words.shape[1], device=queries.device)
        asked = asked.scatter(-1, queries, 1.0)  # each distinct word once; column 0 (padding) is no word
        found = asked @ self.item_words.T  # (..., items): query words in each item's text
        w = self.lexical(torch.zeros(found.shape[0], 1, dtype=torch.long, device=found.device))  # (B, 1, 1)
        return scores + LEXICAL_PRIOR * found * (1 + w.view(found.shape[0], *([1] * (found.dim() - 1))))

    def last_hidden(self, batch: SeqBatch) -> torch.Tensor:
        # The query recalls every earlier state: SASRec's shortcut through the last position alone does not hold.
        return SequentialRecommender.last_hidden(self, batch)

    def forward(self, batch: SeqBatch) -> torch.Tensor:  # (B, T, H)
        hidden = super().forward(batch)
        if batch.target_queries is None:
            return hidden
        words = batch.target_queries  # (B, T, L)
        count = (words > 0).sum(-1, keepdim=True)
        query = self.word_embedding(words).sum(2) / count.clamp(min=1)
        recalled = self._recall(query, hidden)
        fused = self.fuse_norm(hidden + self.dropout(self.fuse(torch.cat([hidden, query, recalled], dim=-1))))
        return torch.where(count > 0, fused, hidden)

    def _recall(self, query: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """For each position t, the states at positions u <= t weighted by how well they answer t's query."""
        b, t, h = hidden.shape
        scores = self.ask(query) @ self.key(hidden).transpose(1, 2) / math.sqrt(h)  # (B, T, T): [t, u]
        steps = torch.arange(t, device=hidden.device)
        back = steps.view(-1, 1) - steps.view(1, -1)  # t - u
        future = back < 0
        # Batch-sized ids: Opacus needs a per-sample input for every embedding.
        distance = back.clamp(0, self.cfg.max_len).masked_fill(future, self.cfg.max_len).repeat(b, 1, 1)
        scores = scores + self.recency(distance).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(future, -math.inf), dim=-1)
        return weights @ hidden
