"""Accuracy, agreement and calibration of predictions over whole splits (the predictions
of :mod:`kdbench.evaluation.predict`). The trainer, the teacher import and
``evaluate_run`` all score with these."""
from __future__ import annotations

from typing import Optional

import torch

from kdbench import functional as KF


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of predicted classes (NaN for an empty split)."""
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


def worst_group_accuracy(preds, labels, groups) -> float:
    accs = [accuracy(preds[groups == g], labels[groups == g]) for g in torch.unique(groups)]
    return min(accs)


def ood_score(dataset, preds, split) -> float:
    """The ``test_ood`` score: the worst group's accuracy where the dataset says so (and
    the split has groups), else the accuracy."""
    if dataset.ood_metric == "worst_group" and getattr(split, "groups", None) is not None:
        return worst_group_accuracy(preds, split.labels, split.groups)
    return accuracy(preds, split.labels)


def calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``ece`` (15 bins) and ``nll`` of a split's logits (None for an empty split)."""
    if len(labels) == 0:
        return {"ece": None, "nll": None}
    return {"ece": float(KF.expected_calibration_error(logits, labels, n_bins=15)),
            "nll": float(KF.nll(logits, labels))}


def agreement(preds_a: torch.Tensor, preds_b: torch.Tensor) -> Optional[float]:
    """Fraction of images with the same top-1 class (e2KD's agreement); None if empty."""
    if preds_a.numel() == 0:
        return None
    return float(KF.agreement(preds_a, preds_b))
