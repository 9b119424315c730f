"""The evaluation metrics (what :mod:`kdbench.evaluation` and :mod:`kdbench.explain`
compute): Grad-CAM, distance correlation and the relevance score (UniCAM's FSS/RS),
explanation similarity, the energy-based pointing game, agreement and calibration. Pure,
stateless and batched (first dimension = samples); float64 inputs give float64 results.

Definitions: docs/metrics.md.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.functional._common import _as_index, _safe_div

__all__ = [
    "gradcam",
    "cam_from_gradients",
    "distance_correlation",
    "relevance_score",
    "u_centered_distances",
    "u_inner",
    "explanation_cosine",
    "energy_pointing_game",
    "agreement",
    "v_distance_correlation",
    "batched_distance_correlation",
    "batched_relevance_score",
    "check_paired_samples",
    "distance_correlation_from_distances",
    "label_distances",
    "relevance_score_from_distances",
    "expected_calibration_error",
    "nll",
    "V_DIST_EPS",
    "V_CORR_EPS",
    "ROW_NORM_EPS",
]


# --------------------------------------------------------------------------- Grad-CAM
def cam_from_gradients(
    stage_output: Tensor, grads: Tensor, size: Optional[Sequence[int]] = None
) -> Tensor:
    """Grad-CAM map from activations A (B×C×h×w) and gradients ∂y/∂A of the same shape:
    ReLU(Σ_k mean_hw(∂y/∂A_k) · A_k), B×h×w, optionally bilinearly resized
    (align_corners=False) to ``size`` = (H, W). Used by :func:`gradcam` and for UniCAM,
    whose target is a relevance score instead of a logit."""
    if stage_output.dim() != 4 or grads.shape != stage_output.shape:
        raise ValueError("expected B×C×h×w activations and gradients of the same shape")
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * stage_output).sum(dim=1))
    if size is not None:
        cam = F.interpolate(
            cam[:, None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False
        )[:, 0]
    return cam


def gradcam(
    stage_output: Tensor,
    logits: Tensor,
    classes: Union[Tensor, Sequence[int]],
    create_graph: bool = False,
    size: Optional[Sequence[int]] = None,
) -> Tensor:
    """Per-image Grad-CAM maps, B×h×w (or B×H×W with ``size``).

    cam_i = ReLU(Σ_k mean_hw(∂y_c/∂A_k) · A_k) with y_c = logits[i, classes[i]] and A =
    ``stage_output`` (B×C×h×w, must be part of the graph that produced ``logits``).
    Gradients come from one ``torch.autograd.grad`` of the sum of the selected logits
    (samples are independent in an eval-mode model). ``create_graph=True`` keeps (and
    retains) the graph so that a loss on the map trains through it; otherwise the graph
    is freed and the returned map is detached. ``size=(H, W)`` resizes bilinearly
    (align_corners=False), e.g. to the input size.
    """
    if not stage_output.requires_grad:
        raise ValueError(
            "gradcam: stage_output does not require grad; call stage_output.requires_grad_() "
            "before computing the logits from it (e.g. for a frozen teacher)"
        )
    if logits.dim() != 2 or logits.shape[0] != stage_output.shape[0]:
        raise ValueError("gradcam: logits must be B×K with the same B as stage_output")
    idx = _as_index(classes, logits.shape[0], logits.device)
    selected = logits.gather(1, idx[:, None]).sum()
    (grads,) = torch.autograd.grad(
        selected, stage_output, create_graph=create_graph, retain_graph=create_graph
    )
    if not create_graph:
        return cam_from_gradients(stage_output.detach(), grads.detach(), size)
    return cam_from_gradients(stage_output, grads, size)


# --------------------------------------------------------------------------- distance correlation
def u_centered_distances(x: Tensor) -> Tensor:
    """U-centred pairwise Euclidean distance matrix of the n rows of ``x`` (flattened to
    n×d): A_ij = a_ij − a_i·/(n−2) − a_·j/(n−2) + a_··/((n−1)(n−2)) off the diagonal,
    A_ii = 0. Needs n ≥ 4 (ValueError otherwise). Differentiable (zero distances have a
    zero subgradient, no NaN)."""
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"distance correlation needs n >= 4 samples, got {n}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    x = x.reshape(n, -1)
    # exact differences (not the |x|²+|y|²-2xy matrix-product shortcut, which leaves
    # float32 noise on the diagonal); the condensed upper triangle, mirrored
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    a = x.new_zeros(n, n).index_put((iu[0], iu[1]), torch.pdist(x, p=2.0))
    a = a + a.T
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    row = a.sum(dim=1, keepdim=True)
    col = a.sum(dim=0, keepdim=True)
    tot = a.sum()
    big_a = a - row / (n - 2) - col / (n - 2) + tot / ((n - 1) * (n - 2))
    return big_a.masked_fill(eye, 0)


def u_inner(a: Tensor, b: Tensor) -> Tensor:
    """Inner product of two U-centred n×n matrices: Σ_{i≠j} A_ij B_ij / (n(n−3))."""
    n = a.shape[0]
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] != n:
        raise ValueError("u_inner expects two n×n matrices of the same shape")
    if n < 4:
        raise ValueError(f"u_inner needs n >= 4, got {n}")
    off = ~torch.eye(n, dtype=torch.bool, device=a.device)
    return (a * b * off).sum() / (n * (n - 3))


def _corr(a: Tensor, b: Tensor) -> Tensor:
    # ⟨A,B⟩ / sqrt(⟨A,A⟩⟨B,B⟩), 0 when a denominator is 0 (gradient-safe)
    num = u_inner(a, b)
    prod = u_inner(a, a) * u_inner(b, b)
    ok = prod > 0
    den = torch.sqrt(torch.where(ok, prod, torch.ones_like(prod)))
    return torch.where(ok, num / den, torch.zeros_like(num))


def check_paired_samples(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different numbers of samples: {x.shape[0]} vs {y.shape[0]}")


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Bias-corrected squared distance correlation R* (Székely & Rizzo 2014):
    ⟨A,B⟩ / sqrt(⟨A,A⟩⟨B,B⟩) with A, B the U-centred distance matrices of x and y
    (n×d each, more dims are flattened; the feature dimensions may differ). Signed, can
    be slightly negative. n ≥ 4 (ValueError otherwise). Returns 0 when a denominator is 0
    (x or y constant). Symmetric in x and y; differentiable."""
    check_paired_samples(x, y)
    return distance_correlation_from_distances(u_centered_distances(x), u_centered_distances(y))


def distance_correlation_from_distances(a: Tensor, b: Tensor) -> Tensor:
    """:func:`distance_correlation` from the two U-centred distance matrices
    (:func:`u_centered_distances`), for callers that reuse a matrix across pairs."""
    return _corr(a, b)


def label_distances(labels: Tensor, like: Tensor, num_classes: Optional[int] = None) -> Tensor:
    """The U-centred distance matrix of a label representation (what
    :func:`relevance_score` compares against; one-hot for integer labels)."""
    rep = _label_representation(labels, like, num_classes)
    check_paired_samples(like, rep)
    return u_centered_distances(rep)


def _label_representation(labels: Tensor, like: Tensor, num_classes: Optional[int]) -> Tensor:
    labels = torch.as_tensor(labels, device=like.device)
    if not labels.is_floating_point() and labels.dim() == 1:
        k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        return F.one_hot(labels.long(), k).to(like.dtype)
    rep = labels.reshape(labels.shape[0], -1)
    return rep if rep.is_floating_point() else rep.to(like.dtype)


def relevance_score(
    x: Tensor, y: Tensor, labels: Tensor, num_classes: Optional[int] = None
) -> Tensor:
    """UniCAM relevance score (semi-partial distance correlation).

    A' = A − (⟨A,B⟩/⟨B,B⟩)·B removes y's part from x's U-centred matrix (only x is
    residualised); the score is ⟨A',L⟩ / sqrt(⟨A',A'⟩⟨L,L⟩) with L the U-centred distance
    matrix of the label representation. ``labels``: a 1-D integer tensor (one-hot encoded
    inside with ``num_classes`` or max + 1 classes) or an n×d float representation used
    as is. If ⟨B,B⟩ = 0 (y constant) nothing is removed; a zero denominator gives 0.
    Differentiable w.r.t. x (and y).
    """
    check_paired_samples(x, y)
    lmat = label_distances(labels, x, num_classes)
    return relevance_score_from_distances(u_centered_distances(x), u_centered_distances(y), lmat)


def relevance_score_from_distances(a: Tensor, b: Tensor, lmat: Tensor) -> Tensor:
    """:func:`relevance_score` from the U-centred distance matrices of x, y and the label
    representation (:func:`u_centered_distances`, :func:`label_distances`)."""
    coef = _safe_div(u_inner(a, b), u_inner(b, b))
    return _corr(a - coef * b, lmat)


# --------------------------------------------------------------------------- explanation metrics
def explanation_cosine(cam_a: Tensor, cam_b: Tensor) -> Tensor:
    """Per-image cosine similarity of flattened maps (B,); 0 for an image where either
    map is all zero (no NaN). Used by ``expl_sim`` and by e2KD's loss (1 − cos)."""
    if cam_a.shape != cam_b.shape:
        raise ValueError(f"maps differ in shape: {tuple(cam_a.shape)} vs {tuple(cam_b.shape)}")
    a = cam_a.reshape(cam_a.shape[0], -1)
    b = cam_b.reshape(cam_b.shape[0], -1)
    dot = (a * b).sum(dim=1)
    na2 = a.pow(2).sum(dim=1)
    nb2 = b.pow(2).sum(dim=1)
    prod = na2 * nb2
    ok = prod > 0
    den = torch.sqrt(torch.where(ok, prod, torch.ones_like(prod)))
    return torch.where(ok, dot / den, torch.zeros_like(dot))


def energy_pointing_game(cam: Tensor, mask: Tensor) -> Tensor:
    """Per-image energy pointing game (B,): Σ_mask max(cam,0) / Σ max(cam,0); 0 when the
    map has no positive energy. ``cam`` B×H×W, ``mask`` boolean of the same shape."""
    if cam.shape != mask.shape:
        raise ValueError(f"cam and mask differ in shape: {tuple(cam.shape)} vs {tuple(mask.shape)}")
    pos = cam.clamp_min(0).reshape(cam.shape[0], -1)
    inside = (pos * mask.reshape(mask.shape[0], -1).to(pos.dtype)).sum(dim=1)
    return _safe_div(inside, pos.sum(dim=1))


def agreement(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Fraction of samples whose top-1 classes agree (0-dim float tensor). Each argument
    is B×K logits or a 1-D tensor of already-predicted classes. To combine batches,
    weight each batch's value by its size."""

    def top1(z: Tensor) -> Tensor:
        return z.argmax(dim=1) if z.dim() == 2 else z.reshape(-1).long()

    pa, pb = top1(logits_a), top1(logits_b)
    if pa.shape != pb.shape:
        raise ValueError(f"different numbers of samples: {pa.numel()} vs {pb.numel()}")
    dtype = logits_a.dtype if logits_a.is_floating_point() else torch.get_default_dtype()
    return (pa == pb).to(dtype).mean()


# --------------------------------------------------------------------------- UniCAM reference estimators
#: epsilons of the UniCAM reference's ``pdCor.Distance_Correlation`` (gadhane/UniCAM)
V_DIST_EPS = 1e-12
V_CORR_EPS = 1e-9
ROW_NORM_EPS = 1e-12


def v_distance_correlation(x: Tensor, y: Tensor, normalize_rows: bool = True) -> Tensor:
    """The UniCAM reference's FSS estimator (gadhane/UniCAM ``pdCor.Distance_Correlation``,
    used by its ``rsfss_common.compute_similarity_metrics``): the *biased* V-statistic
    squared distance correlation. Rows are L2-normalised first (``F.normalize``, eps
    1e-12) unless ``normalize_rows=False``; a_ij = sqrt(‖x_i − x_j‖² + 1e-12) (so the
    diagonal is 1e-6, as there); A = a − row means − column means + grand mean (double
    centring, diagonal kept); Γ_XY = mean(A∘B); result Γ_XY / sqrt(Γ_XX·Γ_YY + 1e-9).
    n×d inputs (more dims flattened), n ≥ 2. Biased upwards for high-dimensional
    features: independent 1024-d Gaussians at n = 256 give ≈ 0.94."""
    check_paired_samples(x, y)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"v_distance_correlation needs n >= 2 samples, got {n}")

    def centred(z: Tensor) -> Tensor:
        z = z.reshape(n, -1)
        if not z.is_floating_point():
            z = z.to(torch.get_default_dtype())
        if normalize_rows:
            z = F.normalize(z, dim=1, eps=ROW_NORM_EPS)
        # exact pairwise differences (condensed, as u_centered_distances), mirrored; the
        # diagonal's squared distance is 0
        iu = torch.triu_indices(n, n, offset=1, device=z.device)
        sq = z.new_zeros(n, n).index_put((iu[0], iu[1]), torch.pdist(z, p=2.0).pow(2))
        a = torch.sqrt(sq + sq.T + V_DIST_EPS)
        return a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()

    a, b = centred(x), centred(y)
    gxy, gxx, gyy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return gxy / torch.sqrt(gxx * gyy + V_CORR_EPS)


def _batches(n: int, batch_size: int, min_size: int = 4):
    """Consecutive index ranges of ``batch_size`` rows; a last batch under ``min_size``
    rows is dropped (the paper-era UniCAM code skips batches of ≤ 3 images)."""
    if batch_size < min_size:
        raise ValueError(f"batch_size must be at least {min_size}, got {batch_size}")
    out = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    out = [(s, e) for s, e in out if e - s >= min_size]
    if not out:
        raise ValueError(f"no batch of at least {min_size} samples in n = {n}")
    return out


def batched_distance_correlation(x: Tensor, y: Tensor, batch_size: int = 5) -> Tensor:
    """The paper-era UniCAM FSS form (gadhane/UniCAM, Nov 2024 ``PetImages/main_RSFSS.py``:
    ``New_DC`` per DataLoader batch of 5, summed and divided by the number of batches):
    the mean over consecutive batches of ``batch_size`` rows of
    :func:`distance_correlation` (U-centred). A last batch of < 4 rows is dropped."""
    check_paired_samples(x, y)
    vals = [distance_correlation(x[s:e], y[s:e]) for s, e in _batches(x.shape[0], batch_size)]
    return torch.stack(vals).mean()


def batched_relevance_score(x: Tensor, y: Tensor, labels: Tensor, num_classes: Optional[int] = None,
                            batch_size: int = 5) -> Tensor:
    """:func:`relevance_score` averaged over consecutive batches of ``batch_size`` rows
    (the paper-era UniCAM code's ``P_DC`` per batch of 5). With integer labels the
    one-hot width is fixed for all batches (``num_classes`` or max + 1 over all rows)."""
    check_paired_samples(x, y)
    labels = torch.as_tensor(labels)
    if not labels.is_floating_point() and labels.dim() == 1 and num_classes is None:
        num_classes = int(labels.max()) + 1
    vals = [relevance_score(x[s:e], y[s:e], labels[s:e], num_classes=num_classes)
            for s, e in _batches(x.shape[0], batch_size)]
    return torch.stack(vals).mean()


# --------------------------------------------------------------------------- calibration
def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error (Guo et al., ICML 2017), 0-dim tensor: the top-1
    confidences (max softmax) fall into ``n_bins`` equal-width bins (k/M, (k+1)/M];
    ECE = Σ_b (n_b / N) · |acc_b − conf_b| over the non-empty bins. 0 for no samples."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected B×K logits and B labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    dtype = logits.dtype if logits.is_floating_point() else torch.get_default_dtype()
    n = logits.shape[0]
    if n == 0:
        return torch.zeros((), dtype=dtype)
    conf, pred = torch.softmax(logits.to(dtype), dim=1).max(dim=1)
    correct = (pred == labels.to(pred.device)).to(dtype)
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp_(0, n_bins - 1)
    acc_sum = torch.zeros(n_bins, dtype=dtype, device=conf.device).index_add_(0, bins, correct)
    conf_sum = torch.zeros(n_bins, dtype=dtype, device=conf.device).index_add_(0, bins, conf)
    return (acc_sum - conf_sum).abs().sum() / n


def nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood of the true class (the mean cross-entropy), 0-dim."""
    return F.cross_entropy(logits, labels.to(logits.device).long(), reduction="mean")
