"""A model's outputs over a whole split (un-augmented, in order): its logits, its top-1
classes. ``predict`` maps a batch of normalised images to logits (a deployed model's
``Distiller.predict``, or a plain network)."""
from __future__ import annotations

from typing import Callable

import torch

from kdbench.data.loader import make_loader


@torch.no_grad()
def predict_split(predict: Callable, dataset, split, device, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes over a whole split (un-augmented, in order)."""
    preds = []
    for batch in make_loader(dataset, split, batch_size, train=False, device=device):
        preds.append(predict(batch["image"]).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def split_logits(predict: Callable, dataset, split, device, batch_size: int = 512) -> torch.Tensor:
    """The logits over a whole split (un-augmented, in order), on the CPU."""
    out = [predict(batch["image"]).cpu() for batch in make_loader(dataset, split, batch_size, train=False,
                                                                            device=device)]
    return torch.cat(out) if out else torch.zeros(0, dataset.num_classes)
