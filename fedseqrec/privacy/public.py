"""Users declared public: a share of the federation's users who opted in to share their histories.

They are chosen by the run seed alone (every silo and the server find the same ones without asking anyone), the
initial global model is trained on their training windows before the first round, and they are left out of the
private rounds and of the privacy claim: the guarantee covers the other users only. With ``--freeze items`` the
item embedding table and the scorer learnt from them stay fixed, so the noise of the private rounds falls on the
rest of the model alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedseqrec.data.sequences import SequenceData
from fedseqrec.data.splits import Split
from fedseqrec.models.base import SequentialRecommender
from fedseqrec.models.batching import TrainingWindows
from fedseqrec.models.config import FitConfig
from fedseqrec.models.optim import adamw
from fedseqrec.models.training import train_epoch

PUBLIC_SEED = 0x9B1C  # mixed with the run seed: the public users are not the first silo's


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


def pretrain_on_public(
    model: SequentialRecommender,
    data: SequenceData,
    split: Split,
    users: np.ndarray,
    fit: FitConfig,
    epochs: int,
    seed: int,
    on_epoch=None,
) -> float:
    """Trains every parameter of ``model`` (the frozen ones too) on the users' training windows; their last
    epoch's mean loss. Frozen parameters are frozen again afterwards."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    windows = TrainingWindows(data, split, users, model.cfg.max_len, fit.random_window, seed=seed)
    loader = DataLoader(windows, batch_size=fit.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = adamw(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    loss = float("nan")
    for epoch in range(epochs):
        loss, _ = train_epoch(model, loader, optimizer, windows.batch_of)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss)
    for p in frozen:
        p.requires_grad_(False)
    return loss
