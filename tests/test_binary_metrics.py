"""Binary metrics and the ESMM loss against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_metrics import calibration, gauc, log_loss

from fedseqrec.evaluation.binary import auc, tpr_at_fpr
from fedseqrec.models.esmm import esmm_terms


def test_auc_with_ties_by_hand():
    # positives 0.9, 0.5, 0.5; negatives 0.5, 0.1: pairs 0.9>0.5 0.9>0.1 0.5=0.5 0.5>0.1 0.5=0.5 0.5>0.1
    assert auc([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert auc([0.3, 0.3], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def test_gauc_weights_each_users_auc_by_impressions_and_skips_one_class_users():
    scores = [0.9, 0.1, 0.2, 0.8, 0.7, 0.5, 0.4]
    labels = [1, 0, 1, 0, 0, 1, 1]
    users = ["a", "a", "b", "b", "b", "c", "c"]
    # a: 1.0 (2 impressions); b: positive 0.2 below both negatives: 0.0 (3); c: positives only: skipped
    assert gauc(scores, labels, users) == pytest.approx((1.0 * 2 + 0.0 * 3) / 5)


def test_log_loss_and_calibration_by_hand():
    p, y = np.array([0.8, 0.4, 0.1, 0.3]), np.array([1, 0, 0, 1])
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.9) + math.log(0.3)) / 4
    assert log_loss(p, y) == pytest.approx(expected)
    assert log_loss([0.0, 1.0], [1, 0]) == pytest.approx(-math.log(1e-7))  # clipped, finite
    found = calibration(p, y, bins=2)
    assert found["predicted"] == pytest.approx(0.4) and found["observed"] == pytest.approx(0.5)
    assert found["ratio"] == pytest.approx(0.8)
    assert found["deciles"] == [
        {"predicted": pytest.approx(0.2), "observed": pytest.approx(0.5), "count": 2},  # 0.1 (0), 0.3 (1)
        {"predicted": pytest.approx(0.6), "observed": pytest.approx(0.5), "count": 2},  # 0.4 (0), 0.8 (1)
    ]


def test_tpr_at_fpr_by_hand():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    labels = [1, 0, 1, 1, 0]
    assert tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, labels, 0.5) == pytest.approx(1.0)


def test_esmm_loss_on_a_case_computed_by_hand():
    a, b = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, -3.0, 0.5])
    clicked, purchased = torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1])  # the third "purchase" has no click
    sig = torch.sigmoid
    ctr = -(torch.log(sig(a[0])) + torch.log(sig(a[1])) + torch.log(1 - sig(a[2]))) / 3
    p = sig(a) * sig(b)
    ctcvr = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert esmm_terms(a, b, clicked, purchased).mean().item() == pytest.approx((ctr + ctcvr).item(), rel=1e-6)
    weighted = -(3 * torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert esmm_terms(a, b, clicked, purchased, (1.0, 3.0)).mean().item() == pytest.approx(
        (ctr + weighted).item(), rel=1e-6
    )


def test_esmm_loss_stays_finite_for_extreme_logits():
    a, b = torch.tensor([-60.0, 60.0]), torch.tensor([-60.0, 60.0])
    value = esmm_terms(a, b, torch.tensor([0, 1]), torch.tensor([0, 1])).mean()
    assert torch.isfinite(value) and value.item() < 1e-6
