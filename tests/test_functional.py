"""Tests of kdbench.functional against independently computed values.

References are either worked by hand (arithmetic in the comments) or plain numpy
implementations of the written formulas with explicit loops (an independent path from
the vectorised torch code), all in float64.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import functional as kf

D = torch.float64


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=D)


# --------------------------------------------------------------------------- numpy references
def np_softmax(v):
    v = np.asarray(v, dtype=np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def np_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def np_kd(zs, zt, T):
    total = 0.0
    for s, t in zip(zs, zt):
        total += np_kl(np_softmax(np.asarray(t) / T), np_softmax(np.asarray(s) / T))
    return T * T * total / len(zs)


def np_dkd(zs, zt, y, alpha, beta, T):
    tckd = nckd = 0.0
    for s, t, c in zip(zs, zt, y):
        ps, pt = np_softmax(np.asarray(s) / T), np_softmax(np.asarray(t) / T)
        tckd += np_kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]])
        others = [j for j in range(len(s)) if j != c]
        qs = np_softmax([s[j] / T for j in others])
        qt = np_softmax([t[j] / T for j in others])
        nckd += np_kl(qt, qs)
    n = len(zs)
    return alpha * T * T * tckd / n + beta * T * T * nckd / n


def np_avgpool(f, out_h, out_w):
    # f: B×C×H×W with H, W integer multiples of out_h, out_w
    b, c, h, w = f.shape
    kh, kw = h // out_h, w // out_w
    out = np.zeros((b, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[:, :, i, j] = f[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(2, 3))
    return out


def np_at(fs, ft, p=2):
    fs, ft = np.asarray(fs, float), np.asarray(ft, float)
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = np_avgpool(fs, ht, ft.shape[3])
    elif ht > hs:
        ft = np_avgpool(ft, hs, fs.shape[3])

    def att(f):
        b = f.shape[0]
        out = []
        for i in range(b):
            m = (np.abs(f[i]) ** p).mean(axis=0).ravel()
            out.append(m / np.sqrt((m ** 2).sum()))
        return np.array(out)

    d = att(fs) - att(ft)
    return (d ** 2).sum() / d.size


def np_cid_sample(s, t):
    total = 0.0
    for si, ti in zip(s, t):
        total += ((si - ti) ** 2).sum() / (ti ** 2).sum()
    return total / len(s)


def np_cid_class(s, t, y):
    terms = []
    for k in sorted(set(int(v) for v in y)):
        idx = [i for i in range(len(y)) if y[i] == k]
        n = len(idx)
        if n < 2:
            continue
        ns = np.array([s[i] / np.linalg.norm(s[i]) for i in idx])
        nt = np.array([t[i] / np.linalg.norm(t[i]) for i in idx])
        diff = 0.0
        for a in range(n):
            for b in range(n):
                diff += (nt[a] @ nt[b] - ns[a] @ ns[b]) ** 2
        terms.append(diff / n ** 2)
    return float(np.mean(terms))


def np_ucenter(x):
    x = np.asarray(x, float).reshape(len(x), -1)
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a[i, j] = math.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1])))
    row = [sum(a[i, j] for j in range(n)) for i in range(n)]
    col = [sum(a[i, j] for i in range(n)) for j in range(n)]
    tot = sum(row)
    A = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                A[i, j] = a[i, j] - row[i] / (n - 2) - col[j] / (n - 2) + tot / ((n - 1) * (n - 2))
    return A


def np_uinner(A, B):
    n = len(A)
    return sum(A[i, j] * B[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 3))


def np_dcor(x, y):
    A, B = np_ucenter(x), np_ucenter(y)
    return np_uinner(A, B) / math.sqrt(np_uinner(A, A) * np_uinner(B, B))


def np_rs(x, y, rep):
    A, B, L = np_ucenter(x), np_ucenter(y), np_ucenter(rep)
    Ar = A - np_uinner(A, B) / np_uinner(B, B) * B
    return np_uinner(Ar, L) / math.sqrt(np_uinner(Ar, Ar) * np_uinner(L, L))


def np_bilinear(img, out_h, out_w):
    # align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0
    in_h, in_w = img.shape

    def coords(o, n_in, n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y0, y1, ly = coords(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, lx = coords(j, in_w, out_w)
            out[i, j] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                         + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
    return out


# --------------------------------------------------------------------------- kd_loss
def test_kd_zero_when_equal(rng):
    z = t64(rng.normal(size=(5, 7)) * 3)
    assert kf.kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-14)


def test_kd_hand_two_class():
    # teacher logits (2 ln 3, 0) at T = 2 -> p_t = softmax(ln 3, 0) = (3/4, 1/4)
    # student logits (0, 0) -> p_s = (1/2, 1/2)
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.75*0.4054651 - 0.25*0.6931472 = 0.1308120
    # T² · KL = 4 * 0.1308120 = 0.5232481; a second, identical-logit sample adds 0,
    # so the batch mean is 0.2616240
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    zs = t64([[0.0, 0.0]])
    zt = t64([[2 * math.log(3), 0.0]])
    assert kf.kd_loss(zs, zt, 2.0).item() == pytest.approx(4 * kl, rel=1e-12)
    assert 4 * kl == pytest.approx(0.5232481, abs=1e-7)
    zs2 = t64([[0.0, 0.0], [1.0, -1.0]])
    zt2 = t64([[2 * math.log(3), 0.0], [1.0, -1.0]])
    assert kf.kd_loss(zs2, zt2, 2.0).item() == pytest.approx(2 * kl, rel=1e-12)


def test_kd_numpy_reference(rng):
    zs, zt = rng.normal(size=(6, 10)) * 4, rng.normal(size=(6, 10)) * 4
    for T in (1.0, 4.0):
        got = kf.kd_loss(t64(zs), t64(zt), T).item()
        assert got == pytest.approx(np_kd(zs, zt, T), rel=1e-10)


# --------------------------------------------------------------------------- dkd_loss
def test_dkd_numpy_reference(rng):
    zs, zt = rng.normal(size=(6, 8)) * 3, rng.normal(size=(6, 8)) * 3
    y = rng.integers(0, 8, size=6)
    for a, b, T in [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)]:
        got = kf.dkd_loss(t64(zs), t64(zt), torch.as_tensor(y), a, b, T).item()
        assert got == pytest.approx(np_dkd(zs, zt, y, a, b, T), rel=1e-10)


def test_dkd_linear_in_alpha_beta(rng):
    zs, zt = t64(rng.normal(size=(4, 5))), t64(rng.normal(size=(4, 5)))
    y = torch.tensor([0, 3, 4, 1])
    tckd = kf.dkd_loss(zs, zt, y, 1.0, 0.0, 4.0)
    nckd = kf.dkd_loss(zs, zt, y, 0.0, 1.0, 4.0)
    both = kf.dkd_loss(zs, zt, y, 2.5, 7.0, 4.0)
    assert both.item() == pytest.approx(2.5 * tckd.item() + 7.0 * nckd.item(), rel=1e-12)


def test_dkd_decomposes_kd(rng):
    # DKD paper identity, per sample: KD = TCKD + (1 - p_t,y) · NCKD
    zs, zt = t64(rng.normal(size=(1, 6)) * 2), t64(rng.normal(size=(1, 6)) * 2)
    y, T = torch.tensor([2]), 3.0
    pty = torch.softmax(zt / T, dim=1)[0, 2].item()
    tckd = kf.dkd_loss(zs, zt, y, 1.0, 0.0, T).item()
    nckd = kf.dkd_loss(zs, zt, y, 0.0, 1.0, T).item()
    assert kf.kd_loss(zs, zt, T).item() == pytest.approx(tckd + (1 - pty) * nckd, rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dkd_no_nan_large_logits(dtype):
    zs = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-3e4, 2e4, 1e4, 0.0]], dtype=dtype,
                      requires_grad=True)
    zt = torch.tensor([[2e4, 0.0, -1e4, 1e3], [0.0, -1e4, 3e4, 2e4]], dtype=dtype)
    y = torch.tensor([0, 2])  # target logit the largest: p_y rounds to 1
    loss = kf.dkd_loss(zs, zt, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert loss.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


# --------------------------------------------------------------------------- at_loss
def test_at_zero_for_identical(rng):
    f = t64(rng.normal(size=(2, 3, 4, 4)))
    assert kf.at_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-15)


def test_at_equal_sizes_numpy(rng):
    fs, ft = rng.normal(size=(3, 4, 4, 4)), rng.normal(size=(3, 6, 4, 4))
    assert kf.at_loss(t64(fs), t64(ft)).item() == pytest.approx(np_at(fs, ft), rel=1e-10)


@pytest.mark.parametrize("student_larger", [True, False])
def test_at_pooling_path_numpy(rng, student_larger):
    big, small = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 5, 4, 4))
    fs, ft = (big, small) if student_larger else (small, big)
    got = kf.at_loss(t64(fs), t64(ft)).item()
    assert got == pytest.approx(np_at(fs, ft), rel=1e-10)
    # pooling the raw map first differs from pooling the attention map: check it matters
    # (the other order, by hand: |F|² mean over channels at 8×8, pooled 2×2, then normalised)
    def att_pooled_after(f, size):
        m = (np.abs(f) ** 2).mean(axis=1)
        if m.shape[-1] != size:
            k = m.shape[-1] // size
            m = m.reshape(m.shape[0], size, k, size, k).mean(axis=(2, 4))
        m = m.reshape(m.shape[0], -1)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    other = float(np.mean((att_pooled_after(fs, 4) - att_pooled_after(ft, 4)) ** 2))
    assert other > 0 and abs(got - other) > 1e-3 * other, (got, other)


def test_at_hand_case():
    # one sample, one channel, 1×2 maps; student (1, 1) -> F² = (1, 1) -> a = (1, 1)/√2;
    # teacher (1, 0) -> a = (1, 0); diff = (1/√2 - 1, 1/√2); mean of squares =
    # ((0.2928932)² + (0.7071068)²)/2 = (0.0857864 + 0.5)/2 = 0.2928932
    fs = t64([[[[1.0, 1.0]]]])
    ft = t64([[[[1.0, 0.0]]]])
    assert kf.at_loss(fs, ft).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)


# --------------------------------------------------------------------------- CID
def test_cid_sample_numpy(rng):
    s, t = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    assert kf.cid_sample_loss(t64(s), t64(t)).item() == pytest.approx(np_cid_sample(s, t), rel=1e-12)


def test_cid_sample_hand():
    # (‖(1,0)-(2,0)‖²/‖(2,0)‖² + ‖(0,0)-(0,1)‖²/‖(0,1)‖²)/2 = (1/4 + 1)/2 = 0.625
    s, t = t64([[1.0, 0.0], [0.0, 0.0]]), t64([[2.0, 0.0], [0.0, 1.0]])
    assert kf.cid_sample_loss(s, t).item() == pytest.approx(0.625)


def test_cid_class_numpy_with_singleton(rng):
    s, t = rng.normal(size=(7, 4)), rng.normal(size=(7, 6))  # dims may differ
    y = np.array([0, 1, 0, 2, 1, 0, 5])  # classes 2 and 5 have one sample: skipped
    got = kf.cid_class_loss(t64(s), t64(t), torch.as_tensor(y)).item()
    assert got == pytest.approx(np_cid_class(s, t, y), rel=1e-10)
    # the singleton samples do not influence the loss
    s2, t2 = s.copy(), t.copy()
    s2[3] += 10
    t2[6] -= 3
    assert kf.cid_class_loss(t64(s2), t64(t2), torch.as_tensor(y)).item() == pytest.approx(got)


def test_cid_class_hand():
    # one class of two samples; student rows (1,0), (0,1) -> G_s = I;
    # teacher rows (1,0), (1,0) -> G_t = all ones; ‖G_t - G_s‖² = 2 (off-diagonal) ; /n² = 0.5
    s, t = t64([[1.0, 0.0], [0.0, 2.0]]), t64([[3.0, 0.0], [1.0, 0.0]])
    assert kf.cid_class_loss(s, t, torch.tensor([4, 4])).item() == pytest.approx(0.5)


def test_cid_class_all_singletons_zero_with_grad(rng):
    s = t64(rng.normal(size=(3, 4))).requires_grad_()
    t = t64(rng.normal(size=(3, 4)))
    loss = kf.cid_class_loss(s, t, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# --------------------------------------------------------------------------- Grad-CAM
class LinearHead(torch.nn.Module):
    """conv stem -> A (B×C×h×w) -> logits = W · mean_hw(A) + b.
    Then ∂y_c/∂A_k,uv = W[c,k]/(h·w), so mean_hw(∂y_c/∂A_k) = W[c,k]/(h·w)."""

    def __init__(self, c_in=2, c=3, k=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(c_in, c, 3, padding=1).double()
        self.fc = torch.nn.Linear(c, k).double()

    def forward(self, x):
        a = self.conv(x)
        return a, self.fc(a.mean(dim=(2, 3)))


def analytic_cam(a, w, classes):
    hw = a.shape[2] * a.shape[3]
    weights = w[classes] / hw  # B×C
    return torch.relu((weights[:, :, None, None] * a).sum(dim=1))


def test_gradcam_linear_model_analytic():
    torch.manual_seed(0)
    model = LinearHead()
    x = torch.randn(3, 2, 4, 5, dtype=D)
    a, logits = model(x)
    classes = torch.tensor([0, 3, 1])
    cam = kf.gradcam(a, logits, classes)
    ref = analytic_cam(a.detach(), model.fc.weight.detach(), classes)
    assert cam.shape == (3, 4, 5)
    assert torch.allclose(cam, ref, atol=1e-12)
    assert not cam.requires_grad and cam.dtype == D
    assert (ref > 0).any() and (ref == 0).any()  # the ReLU is exercised


def test_gradcam_create_graph_trains_through_map():
    torch.manual_seed(1)
    model = LinearHead()
    x = torch.randn(2, 2, 4, 4, dtype=D)
    classes = torch.tensor([2, 0])
    a, logits = model(x)
    cam = kf.gradcam(a, logits, classes, create_graph=True)
    assert cam.grad_fn is not None
    loss = (cam * torch.linspace(0, 1, 16, dtype=D).view(4, 4)).sum()
    loss.backward()
    grads = [p.grad.clone() for p in (model.conv.weight, model.fc.weight)]
    assert all(g.abs().sum() > 0 for g in grads)
    # the same gradients as from the analytic map built directly
    model.zero_grad()
    a2, _ = model(x)
    ref = analytic_cam(a2, model.fc.weight, classes)
    (ref * torch.linspace(0, 1, 16, dtype=D).view(4, 4)).sum().backward()
    for g, p in zip(grads, (model.conv.weight, model.fc.weight)):
        assert torch.allclose(g, p.grad, atol=1e-12)
    # the graph of the logits is retained: one backward of logit loss + map loss works
    model.zero_grad()
    a3, logits3 = model(x)
    cam3 = kf.gradcam(a3, logits3, classes, create_graph=True)
    (logits3.sum() + cam3.sum()).backward()
    assert model.fc.bias.grad is not None


def test_gradcam_resize_matches_numpy_bilinear():
    torch.manual_seed(2)
    model = LinearHead()
    x = torch.randn(2, 2, 3, 4, dtype=D)
    a, logits = model(x)
    classes = torch.tensor([1, 2])
    cam = kf.gradcam(a, logits, classes, size=(7, 10))
    small = analytic_cam(a.detach(), model.fc.weight.detach(), classes).numpy()
    assert cam.shape == (2, 7, 10)
    for i in range(2):
        assert np.allclose(cam[i].numpy(), np_bilinear(small[i], 7, 10), atol=1e-12)


def test_gradcam_needs_grad_on_stage_output():
    a = torch.randn(1, 2, 2, 2, dtype=D)
    with pytest.raises(ValueError):
        kf.gradcam(a, a.mean(dim=(2, 3)), [0])


def test_cam_from_gradients_constant_gradient():
    # grads all 1 -> weights 1 -> cam = relu(Σ_k A_k)
    a = t64([[[[1.0, -2.0]], [[0.5, 0.5]]]])  # 1×2×1×2: channel sums (1.5, -1.5)
    cam = kf.cam_from_gradients(a, torch.ones_like(a))
    assert torch.allclose(cam, t64([[[1.5, 0.0]]]))


# --------------------------------------------------------------------------- distance correlation
@pytest.mark.parametrize("n", [4, 10])
def test_distance_correlation_numpy(rng, n):
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2)) + rng.normal(size=(n, 1))
    y[:, 0] += x[:, 0] ** 2
    got = kf.distance_correlation(t64(x), t64(y)).item()
    assert got == pytest.approx(np_dcor(x, y), rel=1e-10, abs=1e-12)


def test_u_helpers_numpy(rng):
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    A, B = kf.u_centered_distances(t64(x)), kf.u_centered_distances(t64(y))
    assert np.allclose(A.numpy(), np_ucenter(x), atol=1e-12)
    assert kf.u_inner(A, B).item() == pytest.approx(np_uinner(np_ucenter(x), np_ucenter(y)))
    # U-centred matrices have zero row sums (a defining property)
    assert torch.allclose(A.sum(dim=1), torch.zeros(6, dtype=D), atol=1e-12)


def test_distance_correlation_affine_is_one(rng):
    x = t64(rng.normal(size=(20, 4)))
    assert kf.distance_correlation(x, 2 * x + 1).item() == pytest.approx(1.0, rel=1e-12)


def test_distance_correlation_symmetric_and_flattens(rng):
    x, y = t64(rng.normal(size=(12, 2, 3, 3))), t64(rng.normal(size=(12, 5)))
    r1, r2 = kf.distance_correlation(x, y), kf.distance_correlation(y, x)
    assert r1.item() == pytest.approx(r2.item(), rel=1e-12)
    assert r1.item() == pytest.approx(np_dcor(x.numpy().reshape(12, -1), y.numpy()), rel=1e-9)


def test_distance_correlation_independent_near_zero(rng):
    x, y = t64(rng.normal(size=(600, 3))), t64(rng.normal(size=(600, 3)))
    assert abs(kf.distance_correlation(x, y).item()) < 0.02


def test_distance_correlation_edge_cases(rng):
    with pytest.raises(ValueError):
        kf.distance_correlation(t64(rng.normal(size=(3, 2))), t64(rng.normal(size=(3, 2))))
    with pytest.raises(ValueError):
        kf.distance_correlation(t64(rng.normal(size=(5, 2))), t64(rng.normal(size=(6, 2))))
    # a constant variable: zero denominator -> 0, no NaN (also in the gradient)
    x = t64(rng.normal(size=(6, 2))).requires_grad_()
    r = kf.distance_correlation(x, torch.ones(6, 2, dtype=D))
    r.backward()
    assert r.item() == 0.0 and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- relevance score
def test_relevance_score_numpy_int_labels(rng):
    n = 9
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    x[:, 0] += labels  # some relevance
    onehot = np.eye(3)[labels]
    ref = np_rs(x, y, onehot)
    got = kf.relevance_score(t64(x), t64(y), torch.as_tensor(labels)).item()
    assert got == pytest.approx(ref, rel=1e-10)
    # extra (empty) classes do not change the one-hot distances
    got5 = kf.relevance_score(t64(x), t64(y), torch.as_tensor(labels), num_classes=5).item()
    assert got5 == pytest.approx(ref, rel=1e-10)


def test_relevance_score_numpy_float_representation(rng):
    n = 8
    x, y, rep = rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    got = kf.relevance_score(t64(x), t64(y), t64(rep)).item()
    assert got == pytest.approx(np_rs(x, y, rep), rel=1e-10)


def test_relevance_score_x_equal_y_is_zero(rng):
    # everything in x is explained by y: A' = 0 -> zero denominator -> 0
    x = t64(rng.normal(size=(8, 3)))
    assert kf.relevance_score(x, x.clone(), torch.arange(8) % 2).item() == pytest.approx(0, abs=1e-9)


def test_relevance_score_random_labels_near_zero(rng):
    n = 500
    x, y = t64(rng.normal(size=(n, 5))), t64(rng.normal(size=(n, 5)))
    labels = torch.as_tensor(rng.integers(0, 10, size=n))
    assert abs(kf.relevance_score(x, y, labels).item()) < 0.05


def test_relevance_score_gradcheck(rng):
    x = t64(rng.normal(size=(6, 3))).requires_grad_()
    y = t64(rng.normal(size=(6, 2))).requires_grad_()
    labels = torch.tensor([0, 1, 1, 0, 2, 2])
    assert torch.autograd.gradcheck(lambda a, b: kf.relevance_score(a, b, labels), (x, y))


# --------------------------------------------------------------------------- explanation metrics
def test_explanation_cosine():
    a = t64([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    b = t64([[[0.0, 1.0], [0.0, 0.0]], [[2.0, 4.0], [6.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # orthogonal -> 0; scaled copy -> 1; an all-zero map -> 0 (not NaN)
    assert torch.allclose(kf.explanation_cosine(a, b), t64([0.0, 1.0, 0.0]))
    # hand: (1,1,0,0)·(1,0,0,0) = 1, norms √2·1 -> 1/√2
    c = kf.explanation_cosine(t64([[[1.0, 1.0], [0.0, 0.0]]]), t64([[[1.0, 0.0], [0.0, 0.0]]]))
    assert c.item() == pytest.approx(1 / math.sqrt(2))


def test_energy_pointing_game():
    cam = t64([
        [[1.0, 0.0], [0.0, 0.0]],    # fully inside the mask -> 1
        [[1.0, 3.0], [-5.0, 0.0]],   # inside: 1, positive total 4 -> 0.25 (negatives ignored)
        [[0.0, -1.0], [0.0, 0.0]],   # no positive energy -> 0
    ])
    mask = torch.tensor([
        [[True, False], [False, False]],
        [[True, False], [True, False]],
        [[True, True], [True, True]],
    ])
    assert torch.allclose(kf.energy_pointing_game(cam, mask), t64([1.0, 0.25, 0.0]))


def test_agreement():
    a = t64([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0], [0.0, 5.0]])
    b = t64([[2.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    # argmax a = (0, 1, 0, 1), b = (0, 0, 1, 1) -> 2 of 4 agree
    assert kf.agreement(a, b).item() == pytest.approx(0.5)
    assert kf.agreement(a, torch.tensor([0, 1, 0, 0])).item() == pytest.approx(0.75)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(rng, dtype):
    def T(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype)

    z1, z2 = T(rng.normal(size=(8, 5))), T(rng.normal(size=(8, 5)))
    y = torch.as_tensor(rng.integers(0, 5, size=8))
    f1, f2 = T(rng.normal(size=(8, 3, 4, 4))), T(rng.normal(size=(8, 2, 2, 2)))
    e1, e2 = T(rng.normal(size=(8, 6))), T(rng.normal(size=(8, 6)))
    a = f1.clone().requires_grad_()
    logits = a.mean(dim=(2, 3)) @ T(rng.normal(size=(3, 5)))
    cam = kf.gradcam(a, logits, y, size=(6, 6))
    outs = [
        kf.kd_loss(z1, z2, 4.0),
        kf.dkd_loss(z1, z2, y, 1.0, 8.0, 4.0),
        kf.at_loss(f1, f2),
        kf.cid_sample_loss(e1, e2),
        kf.cid_class_loss(e1, e2, y),
        cam,
        kf.distance_correlation(e1, f1),
        kf.relevance_score(e1, e2, y),
        kf.relevance_score(e1, e2, z1),
        kf.explanation_cosine(cam, cam),
        kf.energy_pointing_game(cam, cam > 0.1),
        kf.agreement(z1, z2),
    ]
    for o in outs:
        assert o.dtype == dtype and torch.isfinite(o).all()
