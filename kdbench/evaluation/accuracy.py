"""Accuracy and agreement over whole splits (deployed models)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from kdbench import functional as KF


def split_predictions(predict: Callable, dataset, split, device, batch_size: int = 512) -> torch.Tensor:
    """Top-1 classes of ``predict`` (logits of a batch of normalised images) over a whole
    split, in order (un-augmented)."""
    from kdbench.engine.trainer import predict_split

    return predict_split(predict, dataset, split, device, batch_size)


def top1(preds: torch.Tensor, labels: torch.Tensor) -> float:
    from kdbench.engine.trainer import accuracy

    return accuracy(preds, labels)


def agreement(preds_a: torch.Tensor, preds_b: torch.Tensor) -> Optional[float]:
    """Fraction of images with the same top-1 class (e2KD's agreement); None if empty."""
    if preds_a.numel() == 0:
        return None
    return float(KF.agreement(preds_a, preds_b))
