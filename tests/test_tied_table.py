"""The factored per-user clipping of a tied item table (privacy.tied_table) gives what per-user gradients of every
parameter give: the same norms, the same clipped sum, for every model that uses it, with and without --item-rows."""

import numpy as np
import pytest
import torch
from helpers import model_and_windows

from fedseqrec.privacy import tied_table
from fedseqrec.privacy.per_user import Contribution, _ViewLoss, clipped_update_sum
from fedseqrec.privacy.user_level import item_row_masks


def _both_paths(model, windows, chosen, clip, masks, monkeypatch):
    torch.manual_seed(0)  # (bert4rec's masks: drawn alike on both paths)
    factored = clipped_update_sum(model, windows, chosen, Contribution(clip), masks)
    with monkeypatch.context() as patch:
        patch.setattr(tied_table, "applies", lambda *args: False)
        torch.manual_seed(0)
        generic = clipped_update_sum(model, windows, chosen, Contribution(clip), masks)
    return factored, generic


@pytest.mark.parametrize(
    ("name", "options"),
    [("sasrec", {}), ("sasrec", {"label_smoothing": 0.1}), ("gru4rec", {}), ("lstm", {}), ("bert4rec", {})],
)
@pytest.mark.parametrize("rows", [None, [1, 2, 3, 5, 8, 13, 21, 34]])
def test_the_factored_table_gives_the_per_user_gradients_result(name, options, rows, monkeypatch):
    model, windows = model_and_windows(name, tie_items=True, **options)
    wrapped = _ViewLoss(model)
    trained = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert tied_table.applies(model, trained, 1, "flat")
    masks = item_row_masks(model, rows)
    (fast, fast_norms, fast_loss), (slow, slow_norms, slow_loss) = _both_paths(
        model, windows, np.arange(40), 0.05, masks, monkeypatch
    )
    assert (slow_norms > 0.05).sum() >= 5  # users clipped: the factors matter
    assert np.allclose(fast_norms, slow_norms, rtol=1e-5)
    assert fast_loss == pytest.approx(slow_loss, rel=1e-6)
    assert set(fast) == set(slow)
    for key in slow:
        assert torch.allclose(fast[key], slow[key], rtol=1e-4, atol=1e-7 * slow[key].abs().max().item()), key


def test_models_the_factoring_does_not_cover_take_the_generic_path():
    for name, options, steps, clipping in [
        ("sasrec", {}, 1, "flat"),  # untied: the scorer is a table of its own
        ("sasrec", {"tie_items": True, "loss": "sampled"}, 1, "flat"),
        ("sasrec", {"tie_items": True}, 2, "flat"),  # local steps
        ("sasrec", {"tie_items": True}, 1, "per-layer"),
        ("query-sasrec", {"tie_items": True}, 1, "flat"),  # its scores read the search's words
    ]:
        model, _ = model_and_windows(name, **options)
        trained = {n: p for n, p in _ViewLoss(model).named_parameters() if p.requires_grad}
        assert not tied_table.applies(model, trained, steps, clipping), (name, options, steps, clipping)
