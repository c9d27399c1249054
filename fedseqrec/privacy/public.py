"""Users declared public: a share of the federation's users who opted in to share their histories.

They are chosen by the run seed alone (every silo and the server find the same ones without asking anyone), the
initial global model is trained on their training windows before the first round, and they are left out of the
private rounds and of the privacy claim: the guarantee covers the other users only. With ``--freeze items`` the
item embedding table and the scorer learnt from them stay fixed, so the noise of the private rounds falls on the
rest of the model alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.evaluation.evaluator import evaluate
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import training_examples, training_loader
from fedseqrec.models.config import FitConfig
from fedseqrec.models.optim import adamw
from fedseqrec.models.training import train_epoch

PUBLIC_SEED = 0x9B1C  # mixed with the run seed: the public users are not the first silo's
PATIENCE = 10  # epochs without a better validation score before pretraining stops (SASRec on Beauty dips for a
# few epochs after the first before it learns order: a short patience keeps a popularity-like model)


def public_users(n_users: int, share: float, seed: int) -> np.ndarray:
    """The sorted ids (1-based) of the ⌊share · n_users⌋ public users."""
    count = int(share * n_users)
    order = np.random.default_rng([seed, PUBLIC_SEED]).permutation(n_users) + 1
    return np.sort(order[:count])


def private_users(users: np.ndarray, n_users: int, share: float, seed: int) -> np.ndarray:
    """``users`` without the public ones."""
    if share <= 0:
        return users
    return users[~np.isin(users, public_users(n_users, share, seed))]


@dataclass
class Pretraining:
    epochs: int  # epochs run
    best_epoch: int  # the one kept
    valid_score: float  # the public users' own validation figure there (the run's selection metric)
    loss: float  # its mean training loss


def pretrain_on_public(
    model: SequentialRecommender,
    data: SequenceData,
    split: Split,
    users: np.ndarray,
    fit: FitConfig,
    epochs: int,
    seed: int,
    protocol: str = "full",
    selection: str = "NDCG@10",
) -> Pretraining:
    """Trains every parameter of ``model`` (the frozen ones too) on the users' training windows for up to
    ``epochs`` epochs and keeps the epoch whose weights rank the same users' validation items best (their data is
    public, so choosing by it costs no privacy; a few thousand users overfit in a few epochs). Frozen parameters
    are frozen again afterwards."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    windows = training_examples(data, split, users, model.cfg.max_len, fit.window, seed)
    loader = training_loader(windows, fit.batch_size, seed, fit.by_length)
    optimizer = adamw(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    best = Pretraining(0, 0, -1.0, float("nan"))
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        loss, _ = train_epoch(model, loader, optimizer, windows.batch_of, packed=True)
        model.eval()
        score = evaluate(model, data, split, "valid", users=users, max_len=model.cfg.max_len, protocol=protocol)
        chosen = score.get(selection, 0.0)
        if chosen > best.valid_score:
            best = Pretraining(epoch, epoch, chosen, loss)
            best_state = copy.deepcopy(model.state_dict())
        best.epochs = epoch
        if epoch - best.best_epoch >= PATIENCE:
            break
    model.load_state_dict(best_state)
    for p in frozen:
        p.requires_grad_(False)
    return best
