"""Calibration metrics: ECE (Guo et al. 2017, 15 equal-width bins) on a hand-checked
example and against a loop over explicit bin edges; NLL against torch's cross_entropy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench import functional as KF

# two classes, probabilities given directly (logits = log p): top-1 confidences
# 0.90 (right), 0.88 (wrong), 0.62 (right), 0.55 (right)
PROBS = torch.tensor([[0.90, 0.10], [0.88, 0.12], [0.62, 0.38], [0.45, 0.55]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 0, 1])


def test_ece_hand_checked():
    logits = PROBS.log()
    # bins of width 1/15: 0.90 and 0.88 share (13/15, 14/15]: acc 0.5, conf 0.89 -> 0.39 * 2/4;
    # 0.62 in (9/15, 10/15]: 0.38 * 1/4; 0.55 in (8/15, 9/15]: 0.45 * 1/4
    expected = 0.39 * 2 / 4 + 0.38 / 4 + 0.45 / 4
    assert float(KF.expected_calibration_error(logits, LABELS)) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.4025)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.7375|
    assert float(KF.expected_calibration_error(logits, LABELS, n_bins=1)) == pytest.approx(0.0125, abs=1e-12)
    # shifting every logit by a constant changes nothing; a perfectly calibrated bin gives 0
    assert float(KF.expected_calibration_error(logits + 3.0, LABELS)) == pytest.approx(expected, abs=1e-12)
    sure = torch.tensor([[10.0, -10.0], [-10.0, 10.0]], dtype=torch.float64)
    assert float(KF.expected_calibration_error(sure, torch.tensor([0, 1]))) < 1e-8


def test_ece_matches_explicit_bin_edges():
    """The reference loop of Guo et al.'s code: bins (lower, upper] from linspace(0, 1, 16)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 7, (500,), generator=g)
    conf, pred = logits.softmax(1).max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    ref = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ref += abs(float(correct[inside].mean() - conf[inside].mean())) * float(inside.double().mean())
    assert float(KF.expected_calibration_error(logits, labels, n_bins=15)) == pytest.approx(ref, abs=1e-12)


def test_nll_against_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (64,), generator=g)
    assert float(KF.nll(logits, labels)) == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-12)
    expected = -(math.log(0.90) + math.log(0.12) + math.log(0.62) + math.log(0.55)) / 4
    assert float(KF.nll(PROBS.log(), LABELS)) == pytest.approx(expected, abs=1e-12)


def test_ece_bad_input():
    with pytest.raises(ValueError, match="B×K logits"):
        KF.expected_calibration_error(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    assert float(KF.expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))) == 0.0


def test_trainer_calibration_record():
    """What the trainer writes to metrics.json for the test split of the last model."""
    from kdbench.evaluation.accuracy import calibration

    rec = calibration(PROBS.log(), LABELS)
    # the hand-worked values of the tests above: ECE 0.4025, NLL −mean log p(true class)
    nll = -(math.log(0.90) + math.log(0.12) + math.log(0.62) + math.log(0.55)) / 4
    assert rec == {"ece": pytest.approx(0.4025, abs=1e-12), "nll": pytest.approx(nll, abs=1e-12)}
    assert isinstance(rec["ece"], float) and isinstance(rec["nll"], float)  # JSON numbers, not tensors
    assert calibration(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == {"ece": None, "nll": None}
