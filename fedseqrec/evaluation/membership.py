"""Membership scores of whole sequences under a trained recommender, and how well they separate members.

A sequence's score is the model's mean log-likelihood of each of its items given the items before it (the next-item
task the model was trained on, over the whole catalogue): a model that trained on the sequence tends to give it a
higher likelihood than one that did not. The same score serves the canary audit and the membership-inference attack
on real users (a threshold on it: AUC, and the true-positive rate at a low false-positive rate, in ``binary.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from fedseqrec.models.batching import history_batch
from fedseqrec.models.device import scores_on_cpu


def sequence_scores(
    model, sequences: list[np.ndarray], event: int, seconds: list[np.ndarray] | None = None, batch_size: int = 512
) -> np.ndarray:
    """Mean log-likelihood of each sequence's items 2..L given their prefixes (item ids of the model's vocabulary;
    ``event``: the event-type id of every position; ``seconds``: each sequence's timestamps, else 1 s apart)."""
    max_len = model.cfg.max_len
    prefixes, owners, targets = [], [], []
    for owner, items in enumerate(sequences):
        times = seconds[owner] if seconds is not None else np.arange(len(items), dtype=np.float64)
        for t in range(1, len(items)):
            start = max(0, t - max_len)
            prefixes.append((items[start:t], times[start:t]))
            owners.append(owner)
            targets.append(int(items[t]))
    totals, counts = np.zeros(len(sequences)), np.zeros(len(sequences))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for begin in range(0, len(prefixes), batch_size):
            chunk = prefixes[begin : begin + batch_size]
            batch = history_batch([items for items, _ in chunk], event, [times for _, times in chunk])
            scores = scores_on_cpu(model, batch)
            chosen = torch.tensor(targets[begin : begin + batch_size])
            likelihood = torch.log_softmax(scores, dim=-1).gather(1, chosen.view(-1, 1)).squeeze(1).double()
            np.add.at(totals, owners[begin : begin + batch_size], likelihood.numpy())
            np.add.at(counts, owners[begin : begin + batch_size], 1)
    if was_training:
        model.train()
    return np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)
