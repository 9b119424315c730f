"""UniCAM (Adhane et al.): Grad-CAM whose target is a relevance score.

The target is ``relevance_score(F_X, F_Y, labels)`` of a batch (n ≥ 8), differentiated
w.r.t. model X's last-stage activations A_X; the map is
``cam_from_gradients(A_X, ∂RS/∂A_X)`` (= ReLU(Σ_k mean_hw(∂RS/∂A_k) · A_k)).

Features: F = the *flattened last-stage activations* (B × C·h·w) of each model — the
layer Grad-CAM explains, which is what the paper differentiates (it localises the
distilled/residual features in the last convolutional block). Pooled embeddings would
make ∂RS/∂A spatially constant per channel; flattened activations keep the spatial
structure, and they are the same features ``rs`` / ``rs_residual`` are computed on, so
the distilled map is exactly the Grad-CAM of the reported ``rs``.

- distilled-feature map: X = the distilled student, Y = the base (``vanilla``) student;
- residual map: X = the base, Y = the distilled student.
The score is computed in float64 over the whole batch; the gradient of sample i's
activations is its share of the batch-level score.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from kdbench import functional as KF

MIN_BATCH = 8


def unicam_map(stage_x: Tensor, feat_y: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
               size: Optional[Sequence[int]] = None, return_score: bool = False):
    """UniCAM maps (B×h×w, or B×H×W with ``size``) of model X's last-stage activations
    ``stage_x`` (B×C×h×w) against model Y's features ``feat_y`` (B×..., flattened), for
    integer ``labels`` (B,). Detached; no model is needed (the target only depends on
    the activations). With ``return_score=True`` returns (maps, the relevance score as
    a float) — the score the maps explain."""
    n = stage_x.shape[0]
    if n < MIN_BATCH:
        raise ValueError(f"UniCAM needs a batch of at least {MIN_BATCH} images, got {n}")
    if feat_y.shape[0] != n or len(labels) != n:
        raise ValueError("UniCAM: X features, Y features and labels must have the same number of samples")
    a = stage_x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = KF.relevance_score(a.double().reshape(n, -1), feat_y.detach().double().reshape(n, -1),
                                   torch.as_tensor(labels).long(), num_classes=num_classes)
        (grads,) = torch.autograd.grad(score, a)
    cams = KF.cam_from_gradients(a.detach(), grads.to(a.dtype), size)
    return (cams, float(score.detach())) if return_score else cams


def unicam_maps(student_stage: Tensor, base_stage: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
                size: Optional[Sequence[int]] = None, return_scores: bool = False):
    """(distilled, residual) UniCAM maps from the last-stage activations of the distilled
    student and of its base (vanilla) model on the same images. With
    ``return_scores=True``: (distilled, residual, rs, rs_residual), where rs =
    relevance_score(student, base) and rs_residual = relevance_score(base, student) are
    the targets the two maps explain."""
    distilled, rs = unicam_map(student_stage, base_stage, labels, num_classes=num_classes, size=size,
                               return_score=True)
    residual, rs_res = unicam_map(base_stage, student_stage, labels, num_classes=num_classes, size=size,
                                  return_score=True)
    return (distilled, residual, rs, rs_res) if return_scores else (distilled, residual)


def unicam_from_models(student, base, images: Tensor, labels: Tensor, *, num_classes: Optional[int] = None
                       ) -> Tuple[Tensor, Tensor]:
    """Convenience: run both models (eval mode, no grad through the backbones) and return
    the (distilled, residual) maps at the input size."""
    with torch.no_grad():
        s = student.forward_features(images).stages[-1]
        b = base.forward_features(images).stages[-1]
    return unicam_maps(s, b, labels, num_classes=num_classes, size=tuple(images.shape[-2:]))
