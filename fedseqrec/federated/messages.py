"""Keys the server adds to the run config in a message's ConfigRecord; the ClientApp reads them back."""

import numpy as np
from flwr.app import ArrayRecord

ROUND_KEY = "server-round"  # the round a train message belongs to
WHICH_KEY = "which"  # evaluation: "valid" or "test"
# A pooled simulated node (see server.directory.NodePool) learns from each message which client it acts as.
PARTITION_KEY, PARTITIONS_KEY = "partition-id", "num-partitions"
# --item-weighted: a client's reply metric, how often each item id occurs in its users' training events.
ITEM_COUNTS_KEY = "item-counts"
# Federation-wide user-level DP: every silo samples its users with this rate, and (noise shares) adds noise of this
# standard deviation to its sum; each user's contribution is clipped to this round's norm (adaptive clipping moves
# it), and the silo's count of unclipped users gets its share of that count's noise.
USER_RATE_KEY, NOISE_STD_KEY = "user-rate", "noise-share-std"
CLIP_KEY, COUNT_NOISE_KEY = "clip-norm", "count-noise-share-std"
# --item-rows: the item rows that train (the others are left out of every contribution and get no noise).
ITEM_ROWS_KEY = "item-rows"
# DP-SGD at the clients: the records the server holds for the client addressed (JSON), its authoritative ledger.
HELD_LEDGER_KEY = "held-ledger"
# Secure aggregation: the reply is a sum the server adds up as it is (weight 1), not weights averaged by examples.
SECURE_SUM_KEY = "secagg-sum"
# --download-compression: the arrays are the change from round N's weights (absent: whole weights) / round N's weights.
BASE_KEY, VERSION_KEY = "broadcast-base", "broadcast-version"
# --model cooc: which sums of the co-occurrence release a query asks a silo for (federated.cooccurrence).
COOC_PHASE_KEY = "cooc-phase"
SERVER_KEYS = (
    ROUND_KEY,
    WHICH_KEY,
    PARTITION_KEY,
    PARTITIONS_KEY,
    USER_RATE_KEY,
    NOISE_STD_KEY,
    CLIP_KEY,
    COUNT_NOISE_KEY,
    ITEM_ROWS_KEY,
    HELD_LEDGER_KEY,
    SECURE_SUM_KEY,
    BASE_KEY,
    VERSION_KEY,
    COOC_PHASE_KEY,
)


def summed_keys(arrays: ArrayRecord) -> list[str]:
    """The arrays secure aggregation adds up, in the order both sides use: the floating-point ones, by name."""
    return sorted(k for k, a in arrays.items() if np.issubdtype(np.dtype(a.dtype), np.floating))
