"""Peer methods nst, pkt, rkd, sp, kdsvd, vid, cc, fsp, ft, ab (mdistiller / RepDistiller).

Functional losses against plain-numpy float64 loops written from the formulas (an
independent path from the vectorised torch code) and hand-worked values; every method
trains on ``shapes`` with a CIFAR pair and a timm pair; checkpoint state round-trips;
the two-stage protocols (fsp, ab, ft) run their initialisation stage once, deterministically.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench import functional as kf
from kdbench.config import load_yaml, project_root
from kdbench.hparams import method_hparams
from kdbench.errors import KDBenchError
from kdbench.methods import get_method
from kdbench.methods.ab import stage_preacts
from kdbench.methods.base import PairError
from kdbench.models import create_model
from tests.test_methods_tdd_cid_fcfd_e2kd import build, first_batch, make_ctx
from tests.tiny import ds16, ds32, one_thread, t64  # noqa: F401  (fixtures; one_thread is autouse)

PEER_METHODS = ["nst", "pkt", "rkd", "sp", "kdsvd", "vid", "cc", "fsp", "ft", "ab"]
TWO_STAGE = ["fsp", "ab", "ft"]
D = torch.float64


def val(x):
    return float(x.detach())


# ----------------------------------------------------------------------------- numpy references
def np_avgpool(f, oh, ow):
    b, c, h, w = f.shape
    kh, kw = h // oh, w // ow
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = f[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(2, 3))
    return out


def np_match(a, b):
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return np_avgpool(a, h, w), np_avgpool(b, h, w)


def np_smooth_l1(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return float(np.where(d < 1, 0.5 * d * d, d - 0.5).mean())


def np_unit(v, eps=1e-12):
    return v / max(math.sqrt(float(np.dot(v, v))), eps)


def np_rkd(s, t, wd, wa, squared=False, eps=1e-12):
    def dist(e):
        n = len(e)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    sq = max(float(np.sum((e[i] - e[j]) ** 2)), eps)
                    d[i, j] = sq if squared else math.sqrt(sq)
        return d / d[d > 0].mean()

    def angles(e):
        n = len(e)
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    out.append(float(np.dot(np_unit(e[j] - e[i]), np_unit(e[k] - e[i]))))
        return np.array(out)

    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    return wd * np_smooth_l1(dist(s), dist(t)) + wa * np_smooth_l1(angles(s), angles(t))


def np_pkt(s, t, eps=1e-7):
    def probs(f):
        f = np.array([row / (math.sqrt(float(np.dot(row, row))) + eps) for row in f])
        n = len(f)
        p = np.array([[(float(np.dot(f[i], f[j])) + 1) / 2 for j in range(n)] for i in range(n)])
        return p / p.sum(axis=1, keepdims=True)

    ps, pt = probs(s), probs(t)
    n = len(s)
    return sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(n) for j in range(n)) / n / n


def np_sp(s, t):
    b = len(s)

    def gram(f):
        f = f.reshape(b, -1)
        g = np.array([[float(np.dot(f[i], f[j])) for j in range(b)] for i in range(b)])
        return np.array([np_unit(row) for row in g])

    return float(((gram(t) - gram(s)) ** 2).sum()) / (b * b)


def np_nst(s, t):
    s, t = np_match(s, t)
    b = s.shape[0]

    def maps(f):
        f = f.reshape(b, f.shape[1], -1)
        return np.array([[np_unit(f[n, c]) for c in range(f.shape[1])] for n in range(b)])

    def k(a, c):
        return float(np.mean([[[np.dot(a[n, i], c[n, j]) ** 2 for i in range(a.shape[1])]
                               for j in range(c.shape[1])] for n in range(b)]))

    fs, ft = maps(s), maps(t)
    return k(ft, ft) + k(fs, fs) - 2 * k(fs, ft)


def np_vid(mean, log_scale, t, eps=1e-5):
    var = np.log(1 + np.exp(log_scale)) + eps
    b, c, h, w = mean.shape
    total = 0.0
    for n in range(b):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    total += 0.5 * ((mean[n, ch, i, j] - t[n, ch, i, j]) ** 2 / var[ch] + math.log(var[ch]))
    return total / mean.size


def np_cc(s, t):
    delta = np.abs(s - t)
    return float(np.mean([sum(delta[i, d] * delta[i + 1, d] for d in range(delta.shape[1]))
                          for i in range(len(s) - 1)]))


def np_fsp(gs, gt):
    def mats(g):
        out = []
        for bot, top in zip(g[:-1], g[1:]):
            bot, top = np_match(bot, top)
            b, cb, h, w = bot.shape
            ct = top.shape[1]
            m = np.zeros((b, ct, cb))
            for n in range(b):
                for i in range(ct):
                    for j in range(cb):
                        m[n, i, j] = float(np.sum(top[n, i] * bot[n, j])) / (h * w)
            out.append(m)
        return out

    return sum(float(((a - c) ** 2).mean()) for a, c in zip(mats(gs), mats(gt)))


def np_ft(s, t, p1=2, p2=1):
    s, t = np_match(s, t)

    def factor(f):
        return np.array([np_unit((f[n] ** p1).mean(axis=0).reshape(-1)) for n in range(len(f))])

    d = factor(s) - factor(t)
    return float(np.abs(d).mean()) if p2 == 1 else float((d ** p2).mean())


def np_ab(gs, gt, margin=1.0):
    n = len(gs)
    total = 0.0
    for i, (s, t) in enumerate(zip(gs, gt)):
        stage = 0.0
        for sv, tv in zip(s.reshape(-1), t.reshape(-1)):
            if sv > -margin and tv <= 0:
                stage += (sv + margin) ** 2
            if sv <= margin and tv > 0:
                stage += (sv - margin) ** 2
        total += 2.0 ** (i - n + 1) * stage / s.shape[0] * 3 / 1000
    return total


def np_kdsvd(gs, gt, k=1):
    """From the formula; the decomposition is numpy's LAPACK SVD."""
    def vectors(f, n):
        b, c = f.shape[:2]
        v_out, s_out = [], []
        for i in range(b):
            x = f[i].reshape(c, -1).T  # (H·W)×C
            _, sv, vh = np.linalg.svd(x, full_matrices=False)
            v = vh.T[:, :n]
            v_out.append(v / np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-12))
            s_out.append(sv[:n] / max(np.linalg.norm(sv[:n]), 1e-12))
        return v_out, s_out

    total, prev = 0.0, None
    b = gs[0].shape[0]
    for fs, ft in zip(gs, gt):
        vt, st = vectors(ft, k)
        vs, _ = vectors(fs, k + 3)
        cur = []
        for n in range(b):
            aligned = np.zeros_like(vt[n])
            for q in range(k):
                cos = vs[n].T @ vt[n][:, q]
                best = int(np.argmax(np.abs(cos)))
                aligned[:, q] = vs[n][:, best] * np.sign(cos[best])
            cur.append((aligned * st[n][None, :], vt[n] * st[n][None, :]))
        if prev is not None:
            for n in range(b):
                (s_now, t_now), (s_prev, t_prev) = cur[n], prev[n]
                for c in range(s_now.shape[0]):
                    for c2 in range(s_prev.shape[0]):
                        for q in range(k):
                            rs = math.exp(-(s_now[c, q] - s_prev[c2, q]) ** 2 / 8)
                            rt = math.exp(-(t_now[c, q] - t_prev[c2, q]) ** 2 / 8)
                            total += (rs - rt) ** 2
        prev = cur
    return total / b


# ----------------------------------------------------------------------------- functional: rkd
def test_rkd_numpy_reference(rng):
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    got = kf.rkd_loss(t64(s), t64(t))
    assert got.dtype == D
    assert val(got) == pytest.approx(np_rkd(s, t, 25.0, 50.0), rel=1e-10)
    got_sq = kf.rkd_loss(t64(s), t64(t), distance_weight=2.0, angle_weight=0.5, squared=True)
    assert val(got_sq) == pytest.approx(np_rkd(s, t, 2.0, 0.5, squared=True), rel=1e-10)


def test_rkd_zero_for_scaled_copy_and_teacher_detached(rng):
    s = rng.normal(size=(6, 4))
    # distances are divided by their mean and angles are scale-free: a scaled copy costs 0
    assert val(kf.rkd_loss(t64(s), t64(3.0 * s))) == pytest.approx(0.0, abs=1e-12)
    ts, tt = t64(s).requires_grad_(), t64(rng.normal(size=(6, 4))).requires_grad_()
    kf.rkd_loss(ts, tt).backward()
    assert tt.grad is None and ts.grad is not None and bool(torch.isfinite(ts.grad).all())


def test_rkd_hand_three_points():
    # student: a right angle at the origin, teacher: the same triangle -> 0; moving the
    # teacher's third point changes only the angle/distance terms we can count
    s = t64([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert val(kf.rkd_loss(s, s.clone())) == pytest.approx(0.0, abs=1e-12)
    # a collinear teacher (0, 1, 2 on a line): distances 1, 2, 1 (mean 4/3) vs 1, 1, sqrt2
    t = t64([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    got = val(kf.rkd_loss(s, t, distance_weight=1.0, angle_weight=0.0))
    ds = np.array([1, 1, math.sqrt(2)]) / ((2 + math.sqrt(2)) / 3)
    dt = np.array([1, 2, 1]) / (4 / 3)
    # 9 entries (3 zero diagonal), each off-diagonal pair twice
    want = 2 * sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(ds, dt)) / 9
    assert got == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- pkt
def test_pkt_numpy_reference(rng):
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 7))
    got = kf.pkt_loss(t64(s), t64(t))
    assert got.dtype == D and val(got) == pytest.approx(np_pkt(s, t), rel=1e-10)


def test_pkt_hand_and_equal():
    # student rows orthogonal: similarities (1 + cos)/2 = [[1, .5], [.5, 1]] -> rows [2/3, 1/3];
    # teacher rows parallel: all 1 -> rows [1/2, 1/2]; loss = 2·(½ log(¾) + ½ log(3/2)) / 4
    s = t64([[1.0, 0.0], [0.0, 1.0]])
    t = t64([[1.0, 0.0], [2.0, 0.0]])
    assert val(kf.pkt_loss(s, t)) == pytest.approx(math.log(1.125) / 4, rel=1e-6)
    assert val(kf.pkt_loss(s, s.clone())) == 0.0


def test_pkt_zero_row_gives_no_nan():
    s = t64([[0.0, 0.0], [1.0, 1.0]])
    assert math.isfinite(val(kf.pkt_loss(s, t64([[1.0, 0.0], [0.0, 1.0]]))))


# ----------------------------------------------------------------------------- sp
def test_sp_numpy_reference(rng):
    s, t = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 5, 4, 4))
    got = kf.sp_loss(t64(s), t64(t))
    assert got.dim() == 0 and val(got) == pytest.approx(np_sp(s, t), rel=1e-10)


def test_sp_hand_and_scale():
    # B=2: G_s = [[1,0],[0,1]] (orthogonal rows), G_t = [[1,1],[1,1]] -> normalised rows
    # (1/√2, 1/√2); ‖G_t − G_s‖² = 4·(1 − 1/√2)²·... per entry: diag (1/√2 − 1)², off (1/√2)²
    s = t64([[1.0, 0.0], [0.0, 1.0]])
    t = t64([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    assert val(kf.sp_loss(s, t)) == pytest.approx((2 * (r - 1) ** 2 + 2 * r * r) / 4, rel=1e-12)
    x = t64(np.random.default_rng(1).normal(size=(3, 4)))
    assert val(kf.sp_loss(x, 5.0 * x)) == pytest.approx(0.0, abs=1e-14)


# ----------------------------------------------------------------------------- nst
@pytest.mark.parametrize("shapes", [((3, 4, 4, 4), (3, 2, 4, 4)), ((2, 3, 8, 8), (2, 5, 4, 4)),
                                    ((2, 3, 2, 2), (2, 2, 4, 4))])
def test_nst_numpy_reference(rng, shapes):
    s, t = rng.normal(size=shapes[0]), rng.normal(size=shapes[1])
    got = kf.nst_loss(t64(s), t64(t))
    assert got.dtype == D and val(got) == pytest.approx(np_nst(s, t), rel=1e-10)


def test_nst_equal_and_hand():
    x = t64(np.random.default_rng(2).normal(size=(2, 3, 4, 4)))
    assert val(kf.nst_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-14)
    # one channel each, one sample: normalised maps a, b -> 1 + 1 − 2·(a·b)²
    s = t64([[[[1.0, 0.0]]]])
    t = t64([[[[1.0, 1.0]]]])
    assert val(kf.nst_loss(s, t)) == pytest.approx(2 - 2 * 0.5, rel=1e-12)


# ----------------------------------------------------------------------------- kdsvd
def test_kdsvd_numpy_reference(rng):
    gs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 4, 2, 2))]
    gt = [rng.normal(size=g.shape) for g in gs]
    got = kf.kdsvd_loss([t64(g) for g in gs], [t64(g) for g in gt], k=1)
    assert got.dtype == D
    assert val(got) == pytest.approx(np_kdsvd(gs, gt, 1), rel=1e-8)
    got2 = kf.kdsvd_loss([t64(g) for g in gs], [t64(g) for g in gt], k=2)
    assert val(got2) == pytest.approx(np_kdsvd(gs, gt, 2), rel=1e-8)


def test_kdsvd_equal_zero_and_errors(rng):
    gs = [t64(rng.normal(size=(2, 3, 4, 4))), t64(rng.normal(size=(2, 4, 2, 2)))]
    assert val(kf.kdsvd_loss(gs, [g.clone() for g in gs])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="channels"):
        kf.kdsvd_loss(gs, [gs[0], t64(rng.normal(size=(2, 5, 2, 2)))])
    with pytest.raises(ValueError, match="two stages"):
        kf.kdsvd_loss(gs[:1], gs[:1])


# ----------------------------------------------------------------------------- vid
def test_vid_numpy_reference(rng):
    mean, t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    log_scale = rng.normal(size=3)
    got = kf.vid_loss(t64(mean), t64(log_scale), t64(t))
    assert got.dtype == D and val(got) == pytest.approx(np_vid(mean, log_scale, t), rel=1e-12)
    # a 2× larger teacher map is pooled to the prediction's size
    big = rng.normal(size=(2, 3, 4, 4))
    got = kf.vid_loss(t64(mean), t64(log_scale), t64(big))
    assert val(got) == pytest.approx(np_vid(mean, log_scale, np_avgpool(big, 2, 2)), rel=1e-12)


def test_vid_hand_unit_variance():
    # softplus(log_scale) + eps = 1 -> ½(μ − t)² + ½ log 1
    eps = 1e-5
    log_scale = t64([math.log(math.expm1(1 - eps))] * 2)
    mean = torch.zeros(1, 2, 1, 1, dtype=D)
    t = t64([[[[2.0]], [[0.0]]]])
    assert val(kf.vid_loss(mean, log_scale, mean.clone())) == pytest.approx(0.0, abs=1e-12)
    assert val(kf.vid_loss(mean, log_scale, t)) == pytest.approx(0.5 * 4 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="one value per channel"):
        kf.vid_loss(mean, t64([1.0, 2.0, 3.0]), t)


# ----------------------------------------------------------------------------- cc
def test_cc_numpy_reference_and_hand(rng):
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    got = kf.cc_loss(t64(s), t64(t))
    assert got.dtype == D and val(got) == pytest.approx(np_cc(s, t), rel=1e-12)
    # δ rows (1, 2), (3, 4): 1·3 + 2·4 = 11, one consecutive pair
    assert val(kf.cc_loss(t64([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2, dtype=D))) == 11.0
    assert val(kf.cc_loss(t64(s), t64(s))) == 0.0


# ----------------------------------------------------------------------------- fsp
def test_fsp_numpy_reference(rng):
    gs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2))]
    gt = [rng.normal(size=g.shape) for g in gs]
    got = kf.fsp_loss([t64(g) for g in gs], [t64(g) for g in gt])
    assert got.dtype == D and val(got) == pytest.approx(np_fsp(gs, gt), rel=1e-12)


def test_fsp_hand_and_equal():
    # one sample, one channel, 1×2 maps: G = mean(top·bot); bot (1, 1), top (2, 0) -> 1; teacher 0
    bot, top = t64([[[[1.0, 1.0]]]]), t64([[[[2.0, 0.0]]]])
    zero = torch.zeros_like(bot)
    assert val(kf.fsp_loss([bot, top], [zero, zero])) == 1.0
    assert val(kf.fsp_loss([bot, top], [bot.clone(), top.clone()])) == 0.0
    with pytest.raises(ValueError, match="channels"):
        kf.fsp_loss([bot, top], [torch.zeros(1, 2, 1, 2, dtype=D), zero])


# ----------------------------------------------------------------------------- ft
@pytest.mark.parametrize("p1,p2", [(2, 1), (2, 2), (1, 2)])
def test_ft_numpy_reference(rng, p1, p2):
    s, t = rng.normal(size=(3, 4, 4, 4)), rng.normal(size=(3, 6, 2, 2))
    got = kf.ft_loss(t64(s), t64(t), p1=p1, p2=p2)
    assert got.dtype == D and val(got) == pytest.approx(np_ft(s, t, p1, p2), rel=1e-12)


def test_ft_hand_and_scale():
    # one sample, one channel: factors (1, 0) and (0, 1) -> mean |diff| = 1
    s, t = t64([[[[1.0, 0.0]]]]), t64([[[[0.0, 1.0]]]])
    assert val(kf.ft_loss(s, t)) == 1.0
    x = t64(np.random.default_rng(3).normal(size=(2, 3, 2, 2)))
    assert val(kf.ft_loss(x, 2.0 * x)) == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------- ab
def test_ab_numpy_reference(rng):
    gs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 2, 1, 1))]
    gt = [rng.normal(size=g.shape) for g in gs]
    got = kf.ab_loss([t64(g) for g in gs], [t64(g) for g in gt], margin=0.5)
    assert got.dtype == D and val(got) == pytest.approx(np_ab(gs, gt, 0.5), rel=1e-12)


def test_ab_hand_and_post_relu_teacher(rng):
    # s = (−2, −.5, .5, 2), t = (−1, −1, 1, 1), margin 1: (−.5+1)² + (.5−1)² = .5; one stage,
    # weight 2⁰, B = 1 -> .5·3/1000
    s, t = t64([-2.0, -0.5, 0.5, 2.0]).reshape(1, 1, 2, 2), t64([-1.0, -1.0, 1.0, 1.0]).reshape(1, 1, 2, 2)
    assert val(kf.ab_loss([s], [t])) == pytest.approx(0.0015, rel=1e-12)
    # two stages: weights ½ and 1
    assert val(kf.ab_loss([s, s], [t, t])) == pytest.approx(1.5 * 0.0015, rel=1e-12)
    # only the teacher's sign matters: its post-ReLU map gives the same value
    gs, gt = [t64(rng.normal(size=(2, 3, 2, 2)))], [t64(rng.normal(size=(2, 3, 2, 2)))]
    assert val(kf.ab_loss(gs, gt)) == val(kf.ab_loss(gs, [torch.relu(gt[0])]))


# ----------------------------------------------------------------------------- params
def test_params_files_follow_the_contract():
    for m in PEER_METHODS:
        spec = load_yaml(project_root() / f"params/methods/{m}.yaml")
        assert set(spec) <= {"defaults", "types", "search", "pairs"}
        assert set(spec["defaults"]) == set(get_method(m).hparam_names), m
        assert set(spec["types"]) == set(spec["defaults"]), m
        assert set(spec["search"]) <= set(spec["defaults"]), m
        for key, axis in spec["search"].items():  # the paper value lies in the space
            v = spec["defaults"][key]
            assert v in axis["choices"] if "choices" in axis else axis["low"] <= v <= axis["high"], (m, key)
    assert method_hparams("pkt", "resnet32x4", "resnet8x4")["pkt_weight"] == 30000
    assert method_hparams("ab", "resnet32x4", "shufflenetv2")["init_lr"] == 0.01
    assert method_hparams("ft", "vgg13", "vgg8")["init_lr"] == 0.05
    assert method_hparams("ft", "resnet56", "resnet20")["init_lr"] == 0.01


def _meta(name):
    with torch.device("meta"):
        return create_model(name, 100)


@pytest.mark.parametrize("method,teacher,student,reason", [
    ("kdsvd", "timm:resnet18", "resnet8", "channels"),
    ("fsp", "resnet32x4", "shufflenetv2", "stem has 24 channels"),
    ("fsp", "resnet50", "mobilenetv2", "channels"),
    ("ab", "resnet32x4", "shufflenetv2", "pre-activation"),
])
def test_check_pair_rejects(method, teacher, student, reason):
    with pytest.raises(PairError, match=reason) as err:
        get_method(method).check_pair(_meta(teacher), _meta(student), {})
    assert method in str(err.value) and f"{teacher}->{student}" in str(err.value)


def test_check_pair_accepts_reference_pairs():
    for t, s in [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2")]:
        for m in PEER_METHODS:
            get_method(m).check_pair(_meta(t), _meta(s), {})


def test_stage_preacts_are_pre_relu():
    torch.manual_seed(0)
    net = create_model("resnet8", 4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        outs, from_relu = stage_preacts(net, x)
        post = net.forward_features(x).stages
    assert all(from_relu)
    for pre, p in zip(outs, post):
        assert torch.equal(torch.relu(pre), p) and bool((pre < 0).any())
    # WRN: stages 0, 1 output the raw (pre-activation) residual stream, stage 2 ends in BN-ReLU
    wrn = create_model("wrn_16_2", 4).eval()
    with torch.no_grad():
        outs, from_relu = stage_preacts(wrn, x)
        post = wrn.forward_features(x).stages
    assert from_relu == [False, False, True]
    assert torch.equal(outs[0], post[0]) and torch.equal(torch.relu(outs[2]), post[2])
    # ShuffleNetV2: a stage ends in a channel shuffle, not in a ReLU module
    shuffle = create_model("shufflenetv2", 4).eval()
    with torch.no_grad():
        assert not any(stage_preacts(shuffle, x)[1])


# ----------------------------------------------------------------------------- training
PAIRS = {"cifar": ("resnet14", "resnet8", "ds16", 0.05),
         "timm": ("timm:resnet18", "resnet8", "ds16", 0.01),
         # equal channels at every stage (kdsvd, fsp)
         "timm_same": ("timm:resnet18", "timm:resnet10t", "ds32", 0.01)}
TIMM_PAIR = {m: "timm_same" if m in ("kdsvd", "fsp") else "timm" for m in PEER_METHODS}
CASES = [(m, "cifar") for m in PEER_METHODS] + [(m, TIMM_PAIR[m]) for m in PEER_METHODS]


@pytest.mark.parametrize("method,pair", CASES)
def test_distills_finite_decreasing_teacher_frozen(method, pair, request):
    teacher, student, ds_name, lr = PAIRS[pair]
    ds = request.getfixturevalue(ds_name)
    d = build(method, ds, teacher=teacher, student=student, epochs=2)
    batch = first_batch(ds, d)
    opt = torch.optim.SGD(d.param_groups(5e-4), lr=lr, momentum=0.9)
    d.train()
    d.on_epoch_start(0)  # the two-stage methods run their initialisation stage here
    if method in TWO_STAGE:
        assert bool(d.init_done) and float(d.init_stage_s) > 0
    totals = []
    for _ in range(10):
        terms = d.loss(batch)
        total = sum(terms.values())
        assert all(bool(torch.isfinite(v)) for v in terms.values()), terms
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-3:]) < 0.9 * np.mean(totals[:3]), totals
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training
    if method == "ft":
        assert not d.paraphraser.training and all(p.grad is None for p in d.paraphraser.parameters())


@pytest.mark.parametrize("method", TWO_STAGE)
def test_init_stage_lowers_its_loss_runs_once_and_is_deterministic(method, ds16):
    d = build(method, ds16, epochs=24)  # 30·24/240 = 3 initialisation epochs
    assert d.num_init_epochs == 3
    batch = first_batch(ds16, d)

    def stage_loss():  # in the stage's modes: the trained modules in train mode, the rest eval
        d.eval()
        for m in d.init_modules():
            m.train()
        with torch.no_grad():
            return float(d.init_loss(batch))

    before = stage_loss()
    d.load_trainable_state(build(method, ds16, epochs=24, prepare=False).trainable_state())  # undo BN stats
    frozen = {k: v.clone() for k, v in d.student.head.state_dict().items()}
    d.train()
    d.on_epoch_start(0)
    state = {k: v.clone() for k, v in d.trainable_state().items()}
    after = stage_loss()
    d.load_trainable_state(state)
    assert after < before, (before, after)
    if method != "ft":  # the head is not part of the feature modules
        assert all(torch.equal(v, d.student.head.state_dict()[k]) for k, v in frozen.items())
    else:  # only the paraphraser trains: the student is untouched
        fresh = build(method, ds16, epochs=24, prepare=False)
        assert all(torch.equal(v, fresh.student.state_dict()[k]) for k, v in d.student.state_dict().items())
    d.on_epoch_start(1)  # no second stage
    assert all(torch.equal(v, d.trainable_state()[k]) for k, v in state.items())
    again = build(method, ds16, epochs=24)
    again.train()
    again.on_epoch_start(0)
    restate = again.trainable_state()
    assert all(torch.equal(v, restate[k]) for k, v in state.items() if k != "init_stage_s")


def test_init_stage_needs_prepare_and_zero_epochs_turn_it_off(ds16):
    d = build("fsp", ds16, epochs=2, prepare=False)
    assert d.num_init_epochs == 1  # 30·2/240 rounds to 0: at least one epoch
    with pytest.raises(KDBenchError, match="prepare"):
        d.on_epoch_start(0)
    off = build("ab", ds16, epochs=2, init_epochs=0)
    before = {k: v.clone() for k, v in off.student.state_dict().items()}
    off.train()
    off.on_epoch_start(0)
    assert off.num_init_epochs == 0 and bool(off.init_done)
    assert all(torch.equal(v, off.student.state_dict()[k]) for k, v in before.items())


EXTRA_STATE = {"vid": ["regressors.0.0.weight", "log_scales.0"], "cc": ["embed_student.weight", "embed_teacher.bias"],
               "ft": ["paraphraser.encoder.0.weight", "translator.encoder.1.running_mean", "init_done"],
               "ab": ["init_done", "init_stage_s"], "fsp": ["init_done"]}


@pytest.mark.parametrize("method", PEER_METHODS)
def test_trainable_state_round_trip(method, ds16):
    d1 = build(method, ds16, epochs=2)
    batch = first_batch(ds16, d1)
    opt = torch.optim.SGD(d1.param_groups(0.0), lr=0.05)
    d1.train()
    d1.on_epoch_start(0)
    for _ in range(2):
        terms = d1.loss(batch)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    state = d1.trainable_state()
    assert not any(k.startswith("teacher.") for k in state)
    for key in EXTRA_STATE.get(method, []):
        assert key in state, key
    if method == "vid":  # the variance trains
        assert not torch.equal(state["log_scales.0"], build(method, ds16, prepare=False).log_scales[0].detach())
    d2 = build(method, ds16, epochs=2, seed=1, prepare=False)
    d2.teacher.load_state_dict(d1.teacher.state_dict())
    d2.load_trainable_state(state)
    if method in TWO_STAGE:  # restored: the initialisation stage does not run again
        ctx = make_ctx(ds16)

        def no_loader(*a, **k):
            raise AssertionError("the initialisation stage re-ran")

        ctx.make_loader = no_loader
        d2.prepare(ctx)
        assert d2.artifacts()["init_stage"] == d1.artifacts()["init_stage"]
    for d in (d1, d2):
        d.train()
        d.on_epoch_start(1)
        d.eval()
    l1, l2 = d1.loss(batch), d2.loss(batch)
    assert l1.keys() == l2.keys()
    for k in l1:
        assert torch.allclose(l1[k], l2[k], rtol=1e-6, atol=1e-7), k
    with torch.no_grad():
        assert torch.allclose(d1.predict(batch["image"]), d2.predict(batch["image"]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- engine
def test_engine_two_stage_resume_matches_and_stage_runs_once(tmp_path, monkeypatch):
    """ft through the trainer: the initialisation stage runs once, inside epoch 1 (so in
    train_s), and a run interrupted after epoch 1 resumes, without re-running the stage,
    to the uninterrupted run's numbers and weights (paraphraser and translator included)."""
    from pathlib import Path

    from kdbench.config import teacher_config
    from kdbench.hparams import student_config
    from kdbench.profile import validate_profile
    from kdbench.engine import trainer
    from kdbench.methods.ft import FT
    from tests.tiny import tiny_profile

    prof = validate_profile(tiny_profile(tmp_path, datasets={"shapes": {"n_train": 64, "n_val": 16, "n_test": 16,
                                                                        "n_test_ood": 16}},
                                         teacher_train={"epochs": 1}))
    results = Path(prof["results_dir"])
    tdir = results / "teachers/shapes/resnet14/s0"
    trainer.run(teacher_config(prof, "shapes", "resnet14", 0), tdir, results_dir=results)
    calls = []
    real = FT.run_init_stage

    def counted(self):
        calls.append(self.epoch)
        return real(self)

    monkeypatch.setattr(FT, "run_init_stage", counted)
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "ft", 0)
    full = trainer.run(cfg, tmp_path / "full", results_dir=results, teacher_path=tdir / "model.pt")
    assert calls == [0]
    part = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tdir / "model.pt", max_epochs=1)
    assert part == {"interrupted_after_epoch": 1} and calls == [0, 0]
    resumed = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tdir / "model.pt")
    assert calls == [0, 0]  # restored from the checkpoint, not re-run
    for key in ("top1", "top1_sel", "val_top1"):
        assert resumed[key] == full[key]
    a = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part/model.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("paraphraser.") for k in a) and any(k.startswith("translator.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if k != "init_stage_s")
