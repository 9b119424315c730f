"""The distillation losses (what :mod:`kdbench.methods` computes): pure, stateless and
batched (first dimension = samples); float64 inputs give float64 results.

The names, signatures and reductions follow the methods' reference code; each method's
params file (params/methods/<name>.yaml) says which reference it follows.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.functional._common import _as_index, _safe_div

__all__ = [
    "kd_loss",
    "logit_zscore",
    "dkd_loss",
    "at_loss",
    "rkd_loss",
    "pkt_loss",
    "sp_loss",
    "nst_loss",
    "kdsvd_loss",
    "vid_loss",
    "cc_loss",
    "fsp_loss",
    "ft_loss",
    "ab_loss",
    "cid_sample_loss",
    "cid_class_loss",
    "dist_loss",
    "hcl_loss",
    "mlkd_terms",
    "mlkd_loss",
    "crd_nce_loss",
    "ofd_margin",
    "ofd_loss",
]


# --------------------------------------------------------------------------- logit KD
def logit_zscore(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardization (Sun et al. 2024): (z − mean(z)) / (eps + std(z)) per row,
    with the unbiased (n − 1) standard deviation and ``eps`` added to the std, as the
    reference's ``normalize``."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
            logit_stand: bool = False) -> Tensor:
    """Hinton KD: T² · KL(p_t ‖ p_s), p = softmax(z / T), summed over classes and averaged
    over the batch (= T² · ``kl_div(reduction="batchmean")``). Computed in log space.

    ``logit_stand=True`` first z-scores each logit vector of both sides
    (:func:`logit_zscore`), as the logit-standardization reference (Sun et al. 2024,
    sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py``) does; ``T``
    is then its "base temperature"."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
            f"vs {tuple(teacher_logits.shape)}"
        )
    if logit_stand:
        student_logits, teacher_logits = logit_zscore(student_logits), logit_zscore(teacher_logits)
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
    logit_stand: bool = False,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): α·TCKD + β·NCKD, no warm-up factor.

    TCKD = T² · KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y]) (target class vs all others),
    NCKD = T² · KL(q_t ‖ q_s), q = softmax(z / T) over the non-target classes only;
    both summed per sample, mean over the batch.

    Everything is computed in log space (log(1 − p_y) as a logsumexp over the non-target
    logits, the non-target softmax on the K − 1 remaining logits with the target column
    removed), so there is no NaN/inf for large logits in float32 or float64 even when
    p_y rounds to 1. Needs at least 2 classes. ``logit_stand=True`` z-scores both logit
    vectors first (:func:`logit_zscore`), as the logit-standardization reference's
    ``mdistiller/distillers/DKD.py``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
            f"vs {tuple(teacher_logits.shape)}"
        )
    b, k = student_logits.shape
    if k < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes, got {k}")
    if logit_stand:
        student_logits, teacher_logits = logit_zscore(student_logits), logit_zscore(teacher_logits)
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


# --------------------------------------------------------------------------- peer methods (mdistiller / RepDistiller)
# Each function reproduces its reference's reductions and epsilons (module names below are
# the reference files). Weights the references apply outside their loss functions
# (FEAT_WEIGHT, RepDistiller's -b) stay outside: in the method and its params.
def _pool_to_smaller(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two B×C×H×W maps to the other's size
    (the references' "pool for dimension match")."""
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) == (hb, wb):
        return a, b
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if (hb, wb) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def _check_batch(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: student and teacher batch sizes differ ({a.shape[0]} vs {b.shape[0]})")


def _pdist(e: Tensor, squared: bool, eps: float) -> Tensor:
    """RKD's pairwise distances: (‖e_i‖² + ‖e_j‖² − 2 e_i·e_j) clamped at ``eps``, square
    root unless ``squared``, diagonal set to 0."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def _rkd_angles(e: Tensor) -> Tensor:
    """cos of the angle at e_i between e_j and e_k for all (i, j, k), flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(student_emb: Tensor, teacher_emb: Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Relational KD (Park et al. 2019), mdistiller ``distillers/RKD.py`` ``rkd_loss``.

    Inputs flattened to B×D. Distance term: smooth-L1 (β = 1, mean) between the pairwise
    distance matrices, each divided by the mean of its positive entries; angle term:
    smooth-L1 between the B³ cosines of the angles e_j − e_i, e_k − e_i (each difference
    L2-normalised with F.normalize's eps). The teacher side is detached. Returns
    distance_weight·L_d + angle_weight·L_a (the weights inside, as the reference)."""
    _check_batch(student_emb, teacher_emb, "rkd_loss")
    s = student_emb.reshape(student_emb.shape[0], -1)
    t = teacher_emb.detach().reshape(teacher_emb.shape[0], -1)
    t_d = _pdist(t, squared, eps)
    t_d = t_d / t_d[t_d > 0].mean()
    s_d = _pdist(s, squared, eps)
    s_d = s_d / s_d[s_d > 0].mean()
    loss_d = F.smooth_l1_loss(s_d, t_d)
    loss_a = F.smooth_l1_loss(_rkd_angles(s), _rkd_angles(t))
    return distance_weight * loss_d + angle_weight * loss_a


def _pkt_normalise(f: Tensor, eps: float) -> Tensor:
    f = f / (torch.sqrt(f.pow(2).sum(dim=1, keepdim=True)) + eps)
    return torch.where(torch.isnan(f), torch.zeros_like(f), f)


def pkt_loss(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018), mdistiller ``PKT.py``
    (= RepDistiller ``PKT.cosine_similarity_loss``).

    Rows divided by (‖f‖ + eps) (NaN -> 0); cosine matrices mapped to (c + 1) / 2 and
    row-normalised into conditional probabilities P_s, P_t; loss = the mean over all B²
    entries of P_t · log((P_t + eps) / (P_s + eps)). Not detached inside (the teacher
    embedding arrives without a graph)."""
    _check_batch(student_emb, teacher_emb, "pkt_loss")
    s = _pkt_normalise(student_emb.reshape(student_emb.shape[0], -1), eps)
    t = _pkt_normalise(teacher_emb.reshape(teacher_emb.shape[0], -1), eps)
    ps = (s @ s.t() + 1.0) / 2.0
    pt = (t @ t.t() + 1.0) / 2.0
    ps = ps / ps.sum(dim=1, keepdim=True)
    pt = pt / pt.sum(dim=1, keepdim=True)
    return torch.mean(pt * torch.log((pt + eps) / (ps + eps)))


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019) for one stage pair, mdistiller
    ``SP.py`` ``similarity_loss``: G = F Fᵀ of the flattened B×(C·H·W) maps, each row
    L2-normalised (F.normalize), loss = ‖G_t − G_s‖²_F / B² (a 0-d tensor)."""
    _check_batch(student_feat, teacher_feat, "sp_loss")
    b = student_feat.shape[0]
    s = student_feat.reshape(b, -1)
    t = teacher_feat.reshape(b, -1)
    g_s = F.normalize(s @ s.t())
    g_t = F.normalize(t @ t.t())
    return (g_t - g_s).pow(2).sum() / (b * b)


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """mean over (sample, i, j) of (a_i · b_j)², a: B×C_a×N, b: B×C_b×N."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2).mean()


def nst_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017), polynomial kernel (d = 2, c = 0),
    one stage pair, mdistiller ``NST.py`` ``single_stage_nst_loss``.

    The spatially larger map is average-pooled to the smaller; every channel's map is
    flattened and L2-normalised; loss = mean k(t, t) (detached) + mean k(s, s) − 2 mean
    k(s, t) with k(a, b)_{ij} = (a_i · b_j)², each mean over B·C·C' entries (the squared
    MMD). Channel counts may differ."""
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError("nst_loss expects B×C×H×W feature maps")
    _check_batch(student_feat, teacher_feat, "nst_loss")
    s, t = _pool_to_smaller(student_feat, teacher_feat)
    s = F.normalize(s.reshape(s.shape[0], s.shape[1], -1), dim=2)
    t = F.normalize(t.reshape(t.shape[0], t.shape[1], -1), dim=2)
    return _poly_kernel_mean(t, t).detach() + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _kdsvd_vectors(feat: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """The first ``n`` right singular vectors (B×C×n, each L2-normalised) and singular
    values (B×n, L2-normalised per sample) of the B×(H·W)×C matrix of a map."""
    b, c = feat.shape[:2]
    x = feat.reshape(b, c, -1).transpose(-2, -1)
    _, sv, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite_or_zero(vh.transpose(-2, -1))
    sv = _finite_or_zero(sv)
    return F.normalize(v[:, :, :n], dim=1), F.normalize(sv[:, :n], dim=1)


def kdsvd_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], k: int = 1) -> Tensor:
    """Self-supervised KD with SVD (Lee et al. 2018), RepDistiller ``KDSVD.py`` (the
    authors' layout: each map is the B×(H·W)×C matrix; see the note in
    ``params/methods/kdsvd.yaml`` on mdistiller's reshape).

    Per stage: the teacher's first k right singular vectors V_t (B×C×k) and the student's
    first k + 3 V_s; each teacher vector picks the student vector of largest |cosine|,
    sign-aligned; both are scaled by the teacher's normalised singular values. For every
    consecutive stage pair (l−1, l): R(V) = exp(−(V^l_c − V^{l−1}_{c'})² / 8) over channel
    pairs (c, c') and the k vectors; loss = Σ over pairs of Σ (R(V_s) − R(V_t))² (non-finite
    entries dropped), divided by B. The teacher side is detached. Student and teacher
    need the same channel count at every stage."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"kdsvd_loss: {len(student_feats)} student vs {len(teacher_feats)} teacher stages")
    if len(student_feats) < 2:
        raise ValueError("kdsvd_loss needs at least two stages (it relates consecutive ones)")
    total = None
    prev_s = prev_t = None
    for f_s, f_t in zip(student_feats, teacher_feats):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"kdsvd_loss: student and teacher channels differ ({f_s.shape[1]} vs {f_t.shape[1]})")
        v_t, s_t = _kdsvd_vectors(f_t.detach(), k)
        v_s, _ = _kdsvd_vectors(f_s, k + 3)
        cosine = v_s.transpose(-2, -1) @ v_t  # B×(k+3)×k
        best = cosine.abs().amax(dim=1, keepdim=True)
        select = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
        v_s = v_s @ select
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if prev_s is not None:
            r_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            r_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            term = _finite_or_zero((r_s - r_t.detach()).pow(2)).sum()
            total = term if total is None else total + term
        prev_s, prev_t = v_s, v_t
    return total / student_feats[0].shape[0]


def vid_loss(pred_mean: Tensor, pred_log_scale: Tensor, teacher_feat: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational information distillation (Ahn et al. 2019), mdistiller ``VID.py``
    ``vid_loss`` after the regressor: Gaussian negative log-likelihood (without the
    constant) of the teacher map under mean ``pred_mean`` (B×C×H×W, the regressor's output)
    and per-channel variance σ²_c = softplus(log_scale_c) + eps:
    mean over B·C·H·W of ½((μ − t)² / σ² + log σ²). A spatially larger teacher map is
    average-pooled to the prediction's size first (the reference pools before regressing)."""
    if pred_log_scale.dim() != 1 or pred_log_scale.shape[0] != pred_mean.shape[1]:
        raise ValueError(f"vid_loss: pred_log_scale needs one value per channel ({pred_mean.shape[1]}), "
                         f"got shape {tuple(pred_log_scale.shape)}")
    _check_batch(pred_mean, teacher_feat, "vid_loss")
    if pred_mean.dim() == 4 and teacher_feat.shape[-2:] != pred_mean.shape[-2:]:
        teacher_feat = F.adaptive_avg_pool2d(teacher_feat, pred_mean.shape[-2:])
    var = (F.softplus(pred_log_scale) + eps).to(pred_mean.dtype)
    var = var.reshape([1, -1] + [1] * (pred_mean.dim() - 2))
    return torch.mean(0.5 * ((pred_mean - teacher_feat).pow(2) / var + torch.log(var)))


def cc_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Correlation congruence as RepDistiller ``CC.py`` ``Correlation`` implements it
    (the authors' code): δ = |e_s − e_t| (B×D); loss = mean over the B − 1 consecutive
    sample pairs (i, i+1) of Σ_d δ_{i,d} δ_{i+1,d}."""
    _check_batch(student_emb, teacher_emb, "cc_loss")
    if student_emb.shape[0] < 2:
        raise ValueError("cc_loss needs at least two samples (it correlates consecutive ones)")
    delta = (student_emb - teacher_emb).abs().reshape(student_emb.shape[0], -1)
    return torch.mean((delta[:-1] * delta[1:]).sum(dim=1))


def _fsp_matrices(feats: Sequence[Tensor]):
    """FSP matrices G_l = top · botᵀ / (H·W) (B×C_top×C_bot) of consecutive maps, the
    larger of each pair pooled to the smaller."""
    out = []
    for bot, top in zip(feats[:-1], feats[1:]):
        bot, top = _pool_to_smaller(bot, top)
        b = bot.shape[0]
        bot = bot.reshape(b, bot.shape[1], -1)
        top = top.reshape(b, top.shape[1], -1)
        out.append(torch.bmm(top, bot.transpose(1, 2)) / bot.shape[-1])
    return out


def fsp_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Flow of solution procedure (Yim et al. 2017), RepDistiller ``FSP.py``: the FSP
    matrix of every consecutive pair of maps (pooled to the smaller size), loss = Σ over
    pairs of mean (G_s − G_t)². Student and teacher need equal channel counts."""
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise ValueError(f"fsp_loss needs two equally long lists of >= 2 maps, got "
                         f"{len(student_feats)} and {len(teacher_feats)}")
    for f_s, f_t in zip(student_feats, teacher_feats):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"fsp_loss: student and teacher channels differ ({f_s.shape[1]} vs {f_t.shape[1]})")
    terms = [(g_s - g_t).pow(2).mean() for g_s, g_t in
             zip(_fsp_matrices(student_feats), _fsp_matrices(teacher_feats))]
    return sum(terms[1:], terms[0])


def _factor(f: Tensor, p1: float) -> Tensor:
    return F.normalize(f.pow(p1).mean(dim=1).reshape(f.shape[0], -1))


def ft_loss(student_factor: Tensor, teacher_factor: Tensor, p1: float = 2, p2: float = 1) -> Tensor:
    """Factor transfer (Kim et al. 2018), RepDistiller ``FT.py`` ``FactorTransfer`` on given
    factors (translator output, paraphraser code): the larger map pooled to the smaller;
    φ(F) = L2-normalise per sample(mean over channels of F^p1, flattened); loss = mean of
    |φ_s − φ_t| for p2 = 1, else mean of (φ_s − φ_t)^p2."""
    if student_factor.dim() != 4 or teacher_factor.dim() != 4:
        raise ValueError("ft_loss expects B×C×H×W factors")
    _check_batch(student_factor, teacher_factor, "ft_loss")
    s, t = _pool_to_smaller(student_factor, teacher_factor)
    diff = _factor(s, p1) - _factor(t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


def ab_loss(student_feats: Sequence[Tensor], teacher_preact_feats: Sequence[Tensor],
            margin: float = 1.0) -> Tensor:
    """Activation-boundary transfer (Heo et al. 2019), RepDistiller ``AB.py`` ``ABLoss``
    summed over the stages. Per stage l (of n, l = 0..n−1), with s the (connected) student
    pre-activation and t the teacher pre-activation:
    L_l = Σ (s + m)² [s > −m ∧ t ≤ 0] + (s − m)² [s ≤ m ∧ t > 0] (summed over everything);
    loss = Σ_l 2^(l−n+1) · L_l / B · 3 / 1000. Only the sign of t matters, so post-ReLU
    teacher maps give the same value."""
    if len(student_feats) != len(teacher_preact_feats) or not student_feats:
        raise ValueError(f"ab_loss needs two equally long, non-empty lists, got "
                         f"{len(student_feats)} and {len(teacher_preact_feats)}")
    n = len(student_feats)
    bsz = student_feats[0].shape[0]
    total = None
    for i, (s, t) in enumerate(zip(student_feats, teacher_preact_feats)):
        if s.shape != t.shape:
            raise ValueError(f"ab_loss: stage {i} shapes differ ({tuple(s.shape)} vs {tuple(t.shape)})")
        t = t.detach()
        neg = ((s > -margin) & (t <= 0)).to(s.dtype)
        pos = ((s <= margin) & (t > 0)).to(s.dtype)
        stage = ((s + margin).pow(2) * neg + (s - margin).pow(2) * pos).abs().sum()
        term = 2.0 ** (i - n + 1) * stage / bsz / 1000 * 3
        total = term if total is None else total + term
    return total


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


# --------------------------------------------------------------------------- peer methods (b)
def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    # DIST's pearson_correlation: cosine of the row-centred vectors, eps added to the
    # product of the norms (hunto/image_classification_sota lib/models/losses/dist_kd.py)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0,
              gamma: float = 1.0, tau: float = 1.0) -> Tensor:
    """DIST (Huang et al. 2022): τ²·(β·inter + γ·intra) on y = softmax(z / τ).

    inter = 1 − mean over samples of the Pearson correlation of y_s,i and y_t,i (over the
    classes); intra = the same over classes (columns, correlation over the batch).
    Pearson = ⟨a − ā, b − b̄⟩ / (‖a − ā‖·‖b − b̄‖ + 1e-8), as the reference."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"dist_loss expects two B×K logit tensors of one shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    y_s = F.softmax(student_logits / tau, dim=1)
    y_t = F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.T, y_t.T).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


def hcl_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor],
             levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al. 2021; mdistiller ``ReviewKD.py``),
    summed over the list of (student, teacher) map pairs of equal shapes.

    Per pair: (MSE(F_s, F_t) + Σ_l w_l·MSE(P_l F_s, P_l F_t)) / (1 + Σ_l w_l), P_l adaptive
    average pooling to l×l, over the levels l < H only (H the map's height), the weights
    halving from 1/2 at each level used; MSEs are means over all entries."""
    if len(student_feats) != len(teacher_feats) or not len(student_feats):
        raise ValueError(f"hcl_loss needs two equally long non-empty lists, got "
                         f"{len(student_feats)} and {len(teacher_feats)}")
    total = None
    for fs, ft in zip(student_feats, teacher_feats):
        if fs.shape != ft.shape or fs.dim() != 4:
            raise ValueError(f"hcl_loss: maps must be B×C×H×W of one shape, got "
                             f"{tuple(fs.shape)} and {tuple(ft.shape)}")
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        weight, norm = 1.0, 1.0
        for lv in levels:
            if lv >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, (lv, lv)),
                                              F.adaptive_avg_pool2d(ft, (lv, lv)), reduction="mean")
            norm += weight
        loss = loss / norm
        total = loss if total is None else total + loss
    return total


def _class_gram_gap(p_s: Tensor, p_t: Tensor) -> Tensor:
    # MLKD cc_loss: ‖P_tᵀP_t − P_sᵀP_s‖²_F / K
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


def _batch_gram_gap(p_s: Tensor, p_t: Tensor) -> Tensor:
    # MLKD bc_loss: ‖P_tP_tᵀ − P_sP_sᵀ‖²_F / B
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def mlkd_terms(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor,
               teacher_strong: Tensor, temperature: float = 4.0,
               logit_stand: bool = False) -> dict:
    """The terms of MLKD's distillation loss (Jin et al. 2023; Jin-Ying/Multi-Level-Logit-
    Distillation ``mdistiller/distillers/KD_ours.py``) at KD weight 1, without CE:
    ``{"kd": ..., "cc": ..., "bc": ...}``; :func:`mlkd_loss` is their sum.

    Temperatures S = (T, 3, 5, 2, 6). From the teacher's weak-view softmax (at 1): the
    sample mask m_i = [max_k p_ik ≤ median_i] and the class mask c_k = [Σ_i p_ik ≤
    median_k] (medians with linear interpolation, ``np.percentile(·, 50)``). As the
    reference, the masks multiply already batch-reduced scalars, so each enters as its
    mean (the fraction of ones):

    - kd = mean(m)·Σ_{t∈S} KD_t(weak) + Σ_{t∈(T,3,5)} KD_t(strong) + Σ_{t∈(2,6)} KD_t(weak)
      (KD_t = :func:`kd_loss` at t, with ``logit_stand`` as given);
    - cc = mean(c)·Σ_{t∈S} ‖Q_tᵀQ_t − P_tᵀP_t‖²/K on the weak view (P, Q = softmax(z/t)
      of student and teacher; no z-scoring, as the reference);
    - bc = mean(m)·Σ_{t∈S} ‖Q_tQ_tᵀ − P_tP_tᵀ‖²/B on the weak view.

    The reference also computes strong-view cc and bc terms but leaves them out of its
    total; so does this. Masks use the (detached) teacher logits only."""
    for name, z in (("teacher_weak", teacher_weak), ("student_strong", student_strong),
                    ("teacher_strong", teacher_strong)):
        if z.shape != student_weak.shape:
            raise ValueError(f"mlkd: {name} has shape {tuple(z.shape)}, student_weak {tuple(student_weak.shape)}")
    temps = (float(temperature), 3.0, 5.0, 2.0, 6.0)
    with torch.no_grad():
        p_tw = F.softmax(teacher_weak.detach(), dim=1)
        confidence = p_tw.max(dim=1).values
        sample_mask = (confidence <= torch.quantile(confidence, 0.5)).to(student_weak.dtype).mean()
        class_conf = p_tw.sum(dim=0)
        class_mask = (class_conf <= torch.quantile(class_conf, 0.5)).to(student_weak.dtype).mean()

    def kd(zs, zt, t):
        return kd_loss(zs, zt, t, logit_stand=logit_stand)

    kd_weak = sample_mask * sum(kd(student_weak, teacher_weak, t) for t in temps)
    kd_strong = (sum(kd(student_strong, teacher_strong, t) for t in temps[:3])
                 + sum(kd(student_weak, teacher_weak, t) for t in temps[3:]))
    cc = bc = 0
    for t in temps:
        p_s = F.softmax(student_weak / t, dim=1)
        p_t = F.softmax(teacher_weak / t, dim=1)
        cc = cc + _class_gram_gap(p_s, p_t)
        bc = bc + _batch_gram_gap(p_s, p_t)
    return {"kd": kd_weak + kd_strong, "cc": class_mask * cc, "bc": sample_mask * bc}


def mlkd_loss(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor,
              teacher_strong: Tensor, temperature: float = 4.0) -> Tensor:
    """MLKD's distillation total at KD weight 1, without CE: the sum of
    :func:`mlkd_terms` (instance ``kd`` + class ``cc`` + batch ``bc``)."""
    terms = mlkd_terms(student_weak, teacher_weak, student_strong, teacher_strong, temperature)
    return terms["kd"] + terms["cc"] + terms["bc"]


def crd_nce_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss (``ContrastLoss``, HobbitLong/RepDistiller ``crd/criterion.py``) on
    normalised scores P (B×(1+K), column 0 the positive): with m = K and Pn = 1/n_data,
    −(Σ_i log(P_i0 / (P_i0 + m·Pn + eps)) + Σ_ij log(m·Pn / (P_ij + m·Pn + eps))) / B."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"crd_nce_loss expects B×(1+K) scores with K >= 1, got {tuple(scores.shape)}")
    b, m = scores.shape[0], scores.shape[1] - 1
    noise = m / float(n_data)
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin from a BatchNorm's affine parameters (Heo et al. 2019,
    mdistiller ``OFD.py``): with s = |γ|, m = β, the mean of N(m, s²) below 0,
    m − s·φ(m/s)/Φ(−m/s), where Φ(−m/s) > 0.001, else −3s. Computed in float64."""
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    ratio = m / s
    cdf = torch.special.ndtr(-ratio)
    pdf = torch.exp(-ratio.pow(2) / 2) / math.sqrt(2 * math.pi)
    safe = torch.where(cdf > 0.001, cdf, torch.ones_like(cdf))
    return torch.where(cdf > 0.001, m - s * pdf / safe, -3 * s)


def ofd_loss(student_feat: Tensor, teacher_feat: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance for one stage (mdistiller ``OFD.py`` ``feat_loss``):
    (s − m)²·[s > m, t ≤ m] + (s − t)²·[s > t, m < t ≤ 0] + (s − t)²·[t > 0] per entry,
    ``margin`` one value per channel (broadcast over B, H, W); mean over the batch, sum
    over C×H×W. ``teacher_feat`` is treated as a constant (detach it)."""
    if student_feat.shape != teacher_feat.shape or student_feat.dim() != 4:
        raise ValueError(f"ofd_loss expects two B×C×H×W maps of one shape, got "
                         f"{tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}")
    s, t = student_feat, teacher_feat
    m = margin.to(s).reshape(1, -1, 1, 1)
    loss = ((s - m).pow(2) * ((s > m) & (t <= m)).to(s.dtype)
            + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0)).to(s.dtype)
            + (s - t).pow(2) * (t > 0).to(s.dtype))
    return loss.abs().mean(dim=0).sum()
