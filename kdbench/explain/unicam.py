"""UniCAM (Adhane et al.): Grad-CAM whose target is a relevance score.

As the reference's default (gadhane/UniCAM ``main_UniCAM.py``, ``--feature-depth 1``,
``pdCor_CAM.PDC_CAM``, ``pdCor_model.PDC_Model``):

- the target is ``relevance_score(F_X, F_Y, labels)`` of a batch (n ≥ 8), where F is each
  model's **pooled embedding** (the fc input: the reference's ``feature_depth=1`` drops
  only the fc layer), differentiated w.r.t. model X's last-stage activations A_X (its
  target layer for depth 1: ``layer4``, the last stage);
- the map is ReLU(Σ_k mean_hw(∂RS/∂A_k) · A_k), then **min-max scaled per image**
  (pytorch-grad-cam's ``scale_cam_image``: (m − min) / (max + 1e-7) after the ReLU), then
  resized (bilinear) to the input size.

``features="flattened"`` (kdbench's earlier choice) uses the flattened last-stage
activations as F instead, i.e. the same features ``rs`` is computed on; ``minmax=False``
leaves the maps unscaled. The ``labels`` representation is one-hot (the reference uses
CLIP class prototypes; kdbench has no text/vision embedding model).

- distilled-feature map: X = the distilled student, Y = the base (``vanilla``) student;
- residual map: X = the base, Y = the distilled student.
The score is computed in float64 over the whole batch; the gradient of sample i's
activations is its share of the batch-level score.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import functional as KF
from kdbench.errors import UnknownChoiceError

MIN_BATCH = 8
#: pytorch-grad-cam ``scale_cam_image``'s epsilon
MINMAX_EPS = 1e-7
FEATURES = ("pooled", "flattened")


def minmax_scale(cams: Tensor) -> Tensor:
    """Per map (B×h×w): (m − min) / (max(m − min) + 1e-7), as pytorch-grad-cam."""
    flat = cams.reshape(cams.shape[0], -1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (shifted.amax(dim=1, keepdim=True) + MINMAX_EPS)).reshape(cams.shape)


def unicam_map(stage_x: Tensor, feat_y: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
               size: Optional[Sequence[int]] = None, return_score: bool = False,
               embed_x: Optional[Callable[[Tensor], Tensor]] = None, minmax: bool = True):
    """UniCAM maps (B×h×w, or B×H×W with ``size``) of model X's last-stage activations
    ``stage_x`` (B×C×h×w) against model Y's features ``feat_y`` (B×..., flattened), for
    integer ``labels`` (B,). X's features are ``embed_x(stage_x)`` (its head's pooled
    embedding: the reference's target) or, without ``embed_x``, the flattened
    activations. Detached. With ``return_score=True`` returns (maps, the relevance score
    the maps explain, as a float)."""
    n = stage_x.shape[0]
    if n < MIN_BATCH:
        raise ValueError(f"UniCAM needs a batch of at least {MIN_BATCH} images, got {n}")
    if feat_y.shape[0] != n or len(labels) != n:
        raise ValueError("UniCAM: X features, Y features and labels must have the same number of samples")
    a = stage_x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        fx = embed_x(a) if embed_x is not None else a
        score = KF.relevance_score(fx.double().reshape(n, -1), feat_y.detach().double().reshape(n, -1),
                                   torch.as_tensor(labels).long(), num_classes=num_classes)
        (grads,) = torch.autograd.grad(score, a)
    cams = KF.cam_from_gradients(a.detach(), grads.to(a.dtype))
    if minmax:
        cams = minmax_scale(cams)
    if size is not None:
        cams = F.interpolate(cams[:, None], size=tuple(int(s) for s in size), mode="bilinear",
                             align_corners=False)[:, 0]
    return (cams, float(score.detach())) if return_score else cams


def unicam_maps(student_stage: Tensor, base_stage: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
                size: Optional[Sequence[int]] = None, return_scores: bool = False,
                student_embed: Optional[Callable[[Tensor], Tensor]] = None,
                base_embed: Optional[Callable[[Tensor], Tensor]] = None, minmax: bool = True):
    """(distilled, residual) UniCAM maps from the last-stage activations of the distilled
    student and of its base (vanilla) model on the same images. ``student_embed`` /
    ``base_embed``: the models' ``head.embed`` (both or neither): the maps then explain
    the relevance score of the pooled embeddings (the reference), else of the flattened
    activations. With ``return_scores=True``: (distilled, residual, score_distilled,
    score_residual), the relevance scores RS(student, base) and RS(base, student) of
    those features."""
    if (student_embed is None) != (base_embed is None):
        raise ValueError("unicam_maps: give both models' embed functions or neither")
    with torch.no_grad():
        fs = student_embed(student_stage) if student_embed is not None else student_stage
        fb = base_embed(base_stage) if base_embed is not None else base_stage
    distilled, rs = unicam_map(student_stage, fb, labels, num_classes=num_classes, size=size,
                               return_score=True, embed_x=student_embed, minmax=minmax)
    residual, rs_res = unicam_map(base_stage, fs, labels, num_classes=num_classes, size=size,
                                  return_score=True, embed_x=base_embed, minmax=minmax)
    return (distilled, residual, rs, rs_res) if return_scores else (distilled, residual)


def unicam_from_models(student, base, images: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
                       features: str = "pooled", minmax: bool = True) -> Tuple[Tensor, Tensor]:
    """Convenience: run both models (eval mode, no grad through the backbones) and return
    the (distilled, residual) maps at the input size."""
    if features not in FEATURES:
        raise UnknownChoiceError("UniCAM features", features, FEATURES)
    with torch.no_grad():
        s = student.forward_features(images).stages[-1]
        b = base.forward_features(images).stages[-1]
    embeds = ({"student_embed": student.head.embed, "base_embed": base.head.embed} if features == "pooled" else {})
    return unicam_maps(s, b, labels, num_classes=num_classes, size=tuple(images.shape[-2:]), minmax=minmax, **embeds)
