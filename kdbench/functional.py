"""Pure loss and metric math of kdbench (``kdbench.functional``).

Every function here is stateless, batched (first dimension = samples) and keeps the
input dtype: float64 inputs give float64 results, nothing is cast down.  The names and
signatures of the functions listed in ``specs/methods.md`` ("Public functions") are
public API; the extra helpers below (``u_centered_distances``, ``u_inner``,
``cam_from_gradients``, ``explanation_cosine``, ``energy_pointing_game``,
``agreement``) are public too.

Definitions follow ``specs/methods.md`` (losses) and ``specs/evaluation.md`` (metrics).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kd_loss",
    "dkd_loss",
    "at_loss",
    "cid_sample_loss",
    "cid_class_loss",
    "gradcam",
    "cam_from_gradients",
    "distance_correlation",
    "relevance_score",
    "u_centered_distances",
    "u_inner",
    "explanation_cosine",
    "energy_pointing_game",
    "agreement",
]


# --------------------------------------------------------------------------- helpers
def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den != 0, else 0; no NaN in the value or in the gradient."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _as_index(classes, n: int, device) -> Tensor:
    idx = torch.as_tensor(classes, device=device).long().reshape(-1)
    if idx.numel() != n:
        raise ValueError(f"expected {n} class indices (one per sample), got {idx.numel()}")
    return idx


# --------------------------------------------------------------------------- logit KD
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: T² · KL(p_t ‖ p_s), p = softmax(z / T), summed over classes and averaged
    over the batch (= T² · ``kl_div(reduction="batchmean")``). Computed in log space."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
            f"vs {tuple(teacher_logits.shape)}"
        )
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits / t, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
    return kl * (t * t) / student_logits.shape[0]


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): α·TCKD + β·NCKD, no warm-up factor.

    TCKD = T² · KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y]) (target class vs all others),
    NCKD = T² · KL(q_t ‖ q_s), q = softmax(z / T) over the non-target classes only;
    both summed per sample, mean over the batch.

    Everything is computed in log space (log(1 − p_y) as a logsumexp over the non-target
    logits, the non-target softmax on the K − 1 remaining logits with the target column
    removed), so there is no NaN/inf for large logits in float32 or float64 even when
    p_y rounds to 1. Needs at least 2 classes.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
            f"vs {tuple(teacher_logits.shape)}"
        )
    b, k = student_logits.shape
    if k < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes, got {k}")
    t = temperature
    y = _as_index(target, b, student_logits.device)
    gt = F.one_hot(y, k).bool()

    def parts(z: Tensor) -> Tuple[Tensor, Tensor]:
        zt = z / t
        log_p = F.log_softmax(zt, dim=1)
        log_p_y = log_p.gather(1, y[:, None])  # B×1
        other = zt[~gt].reshape(b, k - 1)  # non-target logits / T
        log_p_other = torch.logsumexp(other, dim=1, keepdim=True) - torch.logsumexp(
            zt, dim=1, keepdim=True
        )
        binary = torch.cat([log_p_y, log_p_other], dim=1)  # log [p_y, 1 - p_y]
        log_q = F.log_softmax(other, dim=1)  # log softmax over non-target classes
        return binary, log_q

    bin_s, q_s = parts(student_logits)
    bin_t, q_t = parts(teacher_logits)
    tckd = F.kl_div(bin_s, bin_t, reduction="sum", log_target=True) * (t * t) / b
    nckd = F.kl_div(q_s, q_t, reduction="sum", log_target=True) * (t * t) / b
    return alpha * tckd + beta * nckd


# --------------------------------------------------------------------------- features
def _attention(feat: Tensor, p: float) -> Tensor:
    # |F|^p equals F^p for the default (even) p = 2 and keeps the map non-negative for odd p
    am = feat.abs().pow(p).mean(dim=1).reshape(feat.shape[0], -1)
    return F.normalize(am, p=2, dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2) -> Tensor:
    """Attention transfer for one stage pair (Zagoruyko & Komodakis 2017).

    a(F) = L2-normalise per sample(mean over channels of |F|^p, flattened to B×HW);
    loss = mean over all B·H·W entries of (a(F_s) − a(F_t))². When spatial sizes differ
    the larger raw map is average-pooled (adaptive average pooling) to the smaller size
    first; channel counts may differ.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError("at_loss expects B×C×H×W feature maps")
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError("student and teacher batch sizes differ")
    hs, ws = student_feat.shape[-2:]
    ht, wt = teacher_feat.shape[-2:]
    if (hs, ws) != (ht, wt):
        size = (min(hs, ht), min(ws, wt))
        if (hs, ws) != size:
            student_feat = F.adaptive_avg_pool2d(student_feat, size)
        if (ht, wt) != size:
            teacher_feat = F.adaptive_avg_pool2d(teacher_feat, size)
    return (_attention(student_feat, p) - _attention(teacher_feat, p)).pow(2).mean()


def cid_sample_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """CID sample loss: (1/B) Σ_i ‖f_s,i − f_t,i‖² / ‖f_t,i‖² (student already projected
    onto the teacher's dimension). A teacher embedding of norm exactly 0 contributes 0."""
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(
            f"embeddings differ in shape: {tuple(student_emb.shape)} vs {tuple(teacher_emb.shape)}"
        )
    s = student_emb.reshape(student_emb.shape[0], -1)
    t = teacher_emb.reshape(teacher_emb.shape[0], -1)
    num = (s - t).pow(2).sum(dim=1)
    den = t.pow(2).sum(dim=1)
    return _safe_div(num, den).mean()


def cid_class_loss(student_emb: Tensor, teacher_emb: Tensor, target: Tensor) -> Tensor:
    """CID class-shape loss.

    For each class k with n_k ≥ 2 samples in the batch: G^k = N(F^k) N(F^k)ᵀ with rows
    L2-normalised, term ‖G_t^k − G_s^k‖²_F / n_k²; the loss is the mean over those
    classes. Student and teacher dimensions may differ (Gram matrices are n_k×n_k).
    Classes with fewer than 2 samples are skipped; if none qualifies the result is a
    zero that is still connected to the inputs' graph.
    """
    b = student_emb.shape[0]
    if teacher_emb.shape[0] != b:
        raise ValueError("student and teacher batch sizes differ")
    y = _as_index(target, b, student_emb.device)
    ns = F.normalize(student_emb.reshape(b, -1), dim=1)
    nt = F.normalize(teacher_emb.reshape(b, -1), dim=1)
    sq = (nt @ nt.T - ns @ ns.T).pow(2)  # B×B, all pairs
    _, inv = torch.unique(y, return_inverse=True)
    onehot = F.one_hot(inv).to(sq.dtype)  # B×K'
    per_class = ((onehot.T @ sq) * onehot.T).sum(dim=1)  # Σ_{i,j in k} sq_ij
    counts = onehot.sum(dim=0)
    keep = counts >= 2
    if not bool(keep.any()):
        zero = student_emb.sum() * 0
        if teacher_emb.requires_grad:
            zero = zero + teacher_emb.sum() * 0
        return zero
    return (per_class[keep] / counts[keep].pow(2)).mean()


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


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different numbers of samples: {x.shape[0]} vs {y.shape[0]}")


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Bias-corrected squared distance correlation R* (Székely & Rizzo 2014):
    ⟨A,B⟩ / sqrt(⟨A,A⟩⟨B,B⟩) with A, B the U-centred distance matrices of x and y
    (n×d each, more dims are flattened; the feature dimensions may differ). Signed, can
    be slightly negative. n ≥ 4 (ValueError otherwise). Returns 0 when a denominator is 0
    (x or y constant). Symmetric in x and y; differentiable."""
    _check_pair(x, y)
    return _corr(u_centered_distances(x), u_centered_distances(y))


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
    _check_pair(x, y)
    rep = _label_representation(labels, x, num_classes)
    _check_pair(x, rep)
    a = u_centered_distances(x)
    b = u_centered_distances(y)
    lmat = u_centered_distances(rep)
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
