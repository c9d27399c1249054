"""The silo's half of the co-occurrence release (``--model cooc`` under ``simulate``, ``deploy`` or ``flwr run``):
what one client adds up over its own users and sends, in answer to the server's ``query.cooccurrence`` messages.

- ``items``: the unit-norm item counts of its users (``item_selection.item_counts``), for the private choice of
  items;
- ``pairs``: the clipped pair vectors of its users over the chosen items, summed (the upper triangle of
  ``clipped_pair_sum``), for the noisy pair release;
- ``support``: with users declared public (``--cooc-public-users``), the clipped pair vectors of its *other*
  users over the pairs the public users hold (``support_pair_sum``);
- ``counted``: without ``--cooc-epsilon``, the exact pair table of its users and their item counts.

Each is a sum over the silo's users, so the server's sum over silos is what one process computes from every user
(``privacy.cooccurrence``); the noise is the server's, added once to the total (the trust of ``--privacy
user-level --noise-shares server``: the server sees each silo's exact sum).
"""

from __future__ import annotations

import numpy as np

from fedseqrec.data.partition import ClientData
from fedseqrec.data.splits import training_item_counts
from fedseqrec.errors import UserError
from fedseqrec.federated.messages import COOC_PHASE_KEY
from fedseqrec.models.cooccurrence import pair_table
from fedseqrec.privacy.cooccurrence import clipped_pair_sum, support_pair_sum
from fedseqrec.privacy.cooccurrence_options import CooccurrenceConfig
from fedseqrec.privacy.item_selection import item_counts
from fedseqrec.privacy.public import private_users

ACTION = "cooccurrence"  # the query action: message type "query.cooccurrence"
PHASE_KEY = COOC_PHASE_KEY  # which sums a query asks for
ITEMS, PAIRS, COUNTED, SUPPORT = "items", "pairs", "counted", "support"


def silo_sums(
    data: ClientData, phase: str, cooc: CooccurrenceConfig, seed: int, given: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """What the silo sends for ``phase``; ``given``: what the server sent with it (the chosen item ids of the
    ``pairs`` phase, the released pairs' keys of the ``support`` phase); ``seed``: the run's (the public users')."""
    seq, split, users, window = data.sequences, data.split, data.users, cooc.cooc_window
    if phase == SUPPORT:  # with users declared public: only the others' pairs, only the pairs the public users hold
        private = private_users(users, seq.n_users, cooc.cooc_public_users, seed)
        return {"pairs": support_pair_sum(seq, split, private, _given(given, "keys", phase), window)[0]}
    if phase == ITEMS:
        return {"counts": item_counts(seq, split, users)}
    if phase == PAIRS:
        chosen = _given(given, "chosen", phase)
        total, _ = clipped_pair_sum(seq, split, users, chosen, window)
        return {"pairs": total[np.triu_indices(len(chosen), k=1)]}
    if phase == COUNTED:
        histories = [seq.sequence(int(u))[: split.train_end[int(u)]] for u in users]
        table = pair_table(histories, window, seq.n_items + 1).tocoo()
        return {
            "first": table.row.astype(np.int64),
            "second": table.col.astype(np.int64),
            "value": table.data.astype(np.float64),
            "items": training_item_counts(seq, split, users).astype(np.float64),
        }
    raise UserError(f"unknown co-occurrence phase {phase!r}: expected {ITEMS}, {PAIRS}, {SUPPORT} or {COUNTED}")


def _given(given: dict[str, np.ndarray], name: str, phase: str) -> np.ndarray:
    if name not in given:
        raise UserError(f"the {phase} of a co-occurrence release need {name!r}; none came with the message")
    return given[name]
