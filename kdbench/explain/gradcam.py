"""Model-level Grad-CAM on a StagedNet's last stage.

The last stage output A is re-entered into the network with ``forward_from(n - 1, A)``
(head only) as a fresh leaf that requires grad, so the maps work for any model, including
a frozen teacher whose parameters do not require grad, and the backward pass runs
through the head only. The map itself is :func:`kdbench.functional.gradcam`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from kdbench import functional as KF


def last_stage_head(model, last_stage: Tensor) -> Tuple[Tensor, Tensor]:
    """(A, logits): ``A`` a copy of the last stage output that requires grad, ``logits``
    the model's head run on it (in the autograd graph of ``A``)."""
    a = last_stage.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_from(model.num_stages - 1, a)
    return a, logits


def gradcam_maps(model, images: Optional[Tensor] = None, classes=None, *, last_stage: Optional[Tensor] = None,
                 size: Optional[Sequence[int]] = None) -> Tuple[Tensor, Tensor]:
    """Grad-CAM maps of ``model`` (a StagedNet in eval mode) for ``classes`` (one per
    image; default: the model's own top-1 class), bilinearly resized to ``size``
    (default: the input size when ``images`` is given, else the stage size).

    Give either ``images`` (the model is run) or the already computed ``last_stage``
    output (no second pass through the backbone). Returns (maps B×H×W detached, logits)."""
    if last_stage is None:
        if images is None:
            raise ValueError("gradcam_maps needs images or last_stage")
        with torch.no_grad():
            last_stage = model.forward_features(images).stages[-1]
        if size is None:
            size = tuple(images.shape[-2:])
    a, logits = last_stage_head(model, last_stage)
    if classes is None:
        classes = logits.detach().argmax(1)
    with torch.enable_grad():
        cams = KF.gradcam(a, logits, classes, size=size)
    return cams, logits.detach()
