"""Peer methods (b): crd, reviewkd, ofd, dist, logit standardization (kd_ls, dkd_ls, mlkd_ls,
ctkd_ls), mlkd, ctkd; their functionals; the loader's strong view.

Functionals are checked against independent float64 numpy computations written from the
formulas (and hand-checked edge cases); methods train a few steps on ``shapes`` with a CIFAR
pair (resnet14 -> resnet8, 16 px) and a timm pair (32 px); state round trips; one
interrupted/resumed engine run (crd: memory banks through a real checkpoint).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.config import teacher_config
from kdbench.hparams import method_hparams, student_config
from kdbench.profile import validate_profile
from kdbench.data.loader import make_loader
from kdbench.data.randaugment import OPS, draw_strong_params, strong_augment
from kdbench.engine import trainer
from kdbench.errors import KDBenchError
from kdbench.methods import TrainContext, get_method
from kdbench.models import create_model
from tests.tiny import ds16, ds32, one_thread, t64, tiny_profile  # noqa: F401  (fixtures; one_thread is autouse)
from tests.numpy_reference import np_kd, np_softmax

TEACHER, STUDENT = "resnet14", "resnet8"
METHODS_B = ["kd_ls", "dkd_ls", "dist", "ctkd", "ctkd_ls", "mlkd", "mlkd_ls", "crd", "reviewkd", "ofd"]
#: test-size overrides: CRD's 16384 negatives per image are for 50k CIFAR images
SMALL = {"crd": {"nce_k": 32}}


def np_zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


def logits(seed, b=6, k=5, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, k)) * scale, rng.normal(size=(b, k)) * scale


# ============================================================================ functionals
def test_public_signatures():
    import inspect

    want = {"hcl_loss": "(student_feats, teacher_feats, levels=(4, 2, 1))",
            "dist_loss": "(student_logits, teacher_logits, beta=1.0, gamma=1.0, tau=1.0)",
            "kd_loss": "(student_logits, teacher_logits, temperature, logit_stand=False)",
            "mlkd_loss": "(student_weak, teacher_weak, student_strong, teacher_strong, temperature=4.0)"}
    for name, sig in want.items():
        params = inspect.signature(getattr(KF, name)).parameters.values()
        got = "(" + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                              for p in params) + ")"
        assert got == sig, name
        assert name in KF.__all__


def test_kd_loss_logit_stand_is_kd_on_zscored_logits():
    zs, zt = logits(0)
    for T in (1.0, 2.0, 4.0):
        got = KF.kd_loss(t64(zs), t64(zt), T, logit_stand=True).item()
        assert got == pytest.approx(np_kd(np_zscore(zs), np_zscore(zt), T), rel=1e-12)
        # default unchanged: plain KD
        assert KF.kd_loss(t64(zs), t64(zt), T).item() == pytest.approx(np_kd(zs, zt, T), rel=1e-12)
    # z-scoring removes each row's shift and (positive) scale: a·z + b gives the same loss
    a = KF.kd_loss(t64(zs), t64(zt), 2.0, logit_stand=True).item()
    b = KF.kd_loss(t64(5 * zs + 3), t64(0.5 * zt - 1), 2.0, logit_stand=True).item()
    assert b == pytest.approx(a, rel=1e-6)
    # hand value: two classes, z = (0, 1) -> zscore = (-1/√2, 1/√2) (std = 1/√2)
    zz = KF.logit_zscore(t64([[0.0, 1.0]]))
    np.testing.assert_allclose(zz.numpy(), [[-1 / math.sqrt(2) / (1 + 1e-7 * math.sqrt(2)),
                                             1 / math.sqrt(2) / (1 + 1e-7 * math.sqrt(2))]], rtol=1e-12)
    # a constant row stays finite (eps in the denominator): zscore 0
    assert torch.equal(KF.logit_zscore(t64([[2.0, 2.0, 2.0]])), torch.zeros(1, 3, dtype=torch.float64))


def test_dkd_loss_logit_stand():
    zs, zt = logits(1)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    got = KF.dkd_loss(t64(zs), t64(zt), y, 1.5, 7.0, 2.0, logit_stand=True)
    want = KF.dkd_loss(t64(np_zscore(zs)), t64(np_zscore(zt)), y, 1.5, 7.0, 2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert KF.dkd_loss(t64(zs), t64(zt), y, 1.5, 7.0, 2.0).item() != pytest.approx(got.item(), rel=1e-3)


def np_pearson_mean(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)))


def test_dist_loss_matches_formula_and_edges():
    zs, zt = logits(2, b=7, k=4)
    for beta, gamma, tau in ((1.0, 1.0, 1.0), (2.0, 0.5, 4.0)):
        ys, yt = np_softmax(zs / tau), np_softmax(zt / tau)
        want = tau ** 2 * (beta * (1 - np_pearson_mean(ys, yt)) + gamma * (1 - np_pearson_mean(ys.T, yt.T)))
        assert KF.dist_loss(t64(zs), t64(zt), beta, gamma, tau).item() == pytest.approx(want, rel=1e-12)
    # identical logits: both correlations 1 (up to the 1e-8 eps) -> 0
    assert KF.dist_loss(t64(zs), t64(zs)).item() == pytest.approx(0.0, abs=1e-6)
    # perfectly anti-correlated two-class rows: inter relation = 1 - (-1) = 2
    a = t64([[1.0, -1.0], [2.0, -2.0]])
    assert KF.dist_loss(a, -a, 1.0, 0.0, 1.0).item() == pytest.approx(2.0, abs=1e-6)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    KF.dist_loss(z, t64(zt[:4, :3])).backward()
    assert torch.isfinite(z.grad).all()


def np_pool(x, lv):
    b, c, h, w = x.shape
    return x.reshape(b, c, lv, h // lv, lv, w // lv).mean(axis=(3, 5))


def test_hcl_loss_matches_formula_and_levels():
    rng = np.random.default_rng(3)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 2, 2, 2), (2, 5, 1, 1)]
    fs = [rng.normal(size=s) for s in shapes]
    ft = [rng.normal(size=s) for s in shapes]
    want = 0.0
    for a, b in zip(fs, ft):
        h = a.shape[2]
        loss, cnt, tot = np.mean((a - b) ** 2), 1.0, 1.0
        for lv in (4, 2, 1):
            if lv >= h:
                continue
            cnt /= 2
            loss += cnt * np.mean((np_pool(a, lv) - np_pool(b, lv)) ** 2)
            tot += cnt
        want += loss / tot
    got = KF.hcl_loss([t64(a) for a in fs], [t64(b) for b in ft])
    assert got.item() == pytest.approx(want, rel=1e-12)
    # hand-checked normalisers: 1×1 maps are a plain MSE; 2×2: (mse + mse_1/2) / 1.5
    one = KF.hcl_loss([t64(fs[3])], [t64(ft[3])]).item()
    assert one == pytest.approx(np.mean((fs[3] - ft[3]) ** 2), rel=1e-12)
    two = KF.hcl_loss([t64(fs[2])], [t64(ft[2])]).item()
    m0 = np.mean((fs[2] - ft[2]) ** 2)
    m1 = np.mean((fs[2].mean(axis=(2, 3)) - ft[2].mean(axis=(2, 3))) ** 2)
    assert two == pytest.approx((m0 + 0.5 * m1) / 1.5, rel=1e-12)
    assert KF.hcl_loss([t64(fs[0])], [t64(fs[0])]).item() == 0.0
    with pytest.raises(ValueError):
        KF.hcl_loss([t64(fs[0])], [t64(ft[1])])


def np_mlkd(sw, tw, ss, ts, T):
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    p = np_softmax(tw)
    conf = p.max(1)
    mask = np.mean(conf <= np.percentile(conf, 50))
    cconf = p.sum(0)
    cmask = np.mean(cconf <= np.percentile(cconf, 50))
    kd = sum(np_kd(sw, tw, t) * mask for t in temps)
    kd += sum(np_kd(ss, ts, t) for t in temps[:3]) + sum(np_kd(sw, tw, t) for t in temps[3:])
    cc = bc = 0.0
    for t in temps:
        ps, pt = np_softmax(sw / t), np_softmax(tw / t)
        cc += cmask * np.sum((pt.T @ pt - ps.T @ ps) ** 2) / sw.shape[1]
        bc += mask * np.sum((pt @ pt.T - ps @ ps.T) ** 2) / sw.shape[0]
    return kd, cc, bc


def test_mlkd_loss_matches_reference_formula():
    sw, tw = logits(4, b=7, k=6)
    ss, ts = logits(5, b=7, k=6)
    for T in (4.0, 2.0):
        kd, cc, bc = np_mlkd(sw, tw, ss, ts, T)
        got = KF.mlkd_loss(t64(sw), t64(tw), t64(ss), t64(ts), T).item()
        assert got == pytest.approx(kd + cc + bc, rel=1e-12)
        terms = KF.mlkd_terms(t64(sw), t64(tw), t64(ss), t64(ts), T)
        assert terms["kd"].item() == pytest.approx(kd, rel=1e-12)
        assert terms["cc"].item() == pytest.approx(cc, rel=1e-12)
        assert terms["bc"].item() == pytest.approx(bc, rel=1e-12)
    # logit standardization touches the instance terms only
    ls = KF.mlkd_terms(t64(sw), t64(tw), t64(ss), t64(ts), 2.0, logit_stand=True)
    kd_ls, cc2, bc2 = np_mlkd(np_zscore(sw), np_zscore(tw), np_zscore(ss), np_zscore(ts), 2.0)
    assert ls["kd"].item() == pytest.approx(kd_ls, rel=1e-9)
    assert ls["cc"].item() == pytest.approx(np_mlkd(sw, tw, ss, ts, 2.0)[1], rel=1e-12)
    # hand-checked: a student equal to its teacher has no loss; the sample mask of 4
    # distinct confidences keeps 2 (median interpolated between the middle two)
    assert KF.mlkd_loss(t64(sw), t64(sw), t64(ss), t64(ss)).item() == pytest.approx(0.0, abs=1e-12)
    z = t64([[3.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0]])
    kd_only = KF.mlkd_terms(z, z + t64([[0, 1.0, 0]]), z, z, 4.0)["kd"].item()
    full = sum(np_kd(z.numpy(), z.numpy() + [0, 1.0, 0], t) for t in (4.0, 3.0, 5.0, 2.0, 6.0))
    tail = sum(np_kd(z.numpy(), z.numpy() + [0, 1.0, 0], t) for t in (2.0, 6.0))
    assert kd_only == pytest.approx(0.5 * full + tail, rel=1e-12)


def test_crd_nce_loss_matches_formula():
    rng = np.random.default_rng(6)
    p = rng.uniform(1e-4, 0.2, size=(5, 9))
    n = 40
    m = 8
    pn = 1 / n
    want = -(np.log(p[:, 0] / (p[:, 0] + m * pn + 1e-7)).sum()
             + np.log(m * pn / (p[:, 1:] + m * pn + 1e-7)).sum()) / 5
    assert KF.crd_nce_loss(t64(p), n).item() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError):
        KF.crd_nce_loss(t64(p[:, :1]), n)


def test_ofd_margin_and_loss():
    def cdf(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    gamma = t64([1.0, -2.0, 0.5, 0.1])
    beta = t64([0.0, 1.0, -0.3, 2.0])  # last channel: Φ(−20) < 0.001 -> −3·|γ|
    want = []
    for s, m in zip(np.abs(gamma.numpy()), beta.numpy()):
        c = cdf(-m / s)
        want.append(-s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / c + m if c > 0.001 else -3 * s)
    np.testing.assert_allclose(KF.ofd_margin(gamma, beta).numpy(), want, rtol=1e-12)
    assert KF.ofd_margin(t64([1.0]), t64([0.0])).item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-12)
    rng = np.random.default_rng(7)
    s = rng.normal(size=(3, 4, 2, 2))
    t = rng.normal(size=(3, 4, 2, 2))
    mg = np.array(want).reshape(1, 4, 1, 1)
    loss = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        sv, tv, mv = s[idx], t[idx], mg[0, idx[1], 0, 0]
        if tv > 0:
            loss[idx] = (sv - tv) ** 2
        elif tv > mv:  # mv < t <= 0: only when the student is above the teacher
            loss[idx] = (sv - tv) ** 2 if sv > tv else 0.0
        else:  # t <= margin: only above the margin
            loss[idx] = (sv - mv) ** 2 if sv > mv else 0.0
    got = KF.ofd_loss(t64(s), t64(t), t64(want)).item()
    assert got == pytest.approx(loss.mean(axis=0).sum(), rel=1e-12)


# ============================================================================ strong view
def test_strong_view_deterministic_batched_and_weak_unchanged(ds16):
    def batches(strong, epoch=0, seed=0):
        ld = make_loader(ds16, "train", 16, train=True, seed=seed, strong_view=strong)
        ld.set_epoch(epoch)
        return list(ld)

    plain, a, b = batches(False), batches(True), batches(True)
    assert len(plain) == len(a) == 3
    for p, x, y in zip(plain, a, b):
        assert set(x) == set(p) | {"image_strong"}
        for k in p:  # every weak-view key bit-identical to a loader without the strong view
            assert torch.equal(p[k], x[k]), k
        assert torch.equal(x["image_strong"], y["image_strong"])  # same (seed, epoch)
        assert x["image_strong"].shape == x["image"].shape and x["image_strong"].dtype == torch.float32
        assert not torch.equal(x["image_strong"], x["image"])
    other = batches(True, epoch=1)
    assert not torch.equal(other[0]["image_strong"], batches(True, epoch=1, seed=1)[0]["image_strong"])
    assert not torch.equal(a[0]["image_strong"], other[0]["image_strong"])
    # eval loaders ignore it
    ev = next(iter(make_loader(ds16, "val", 8, train=False, strong_view=True)))
    assert "image_strong" not in ev


def test_strong_ops_match_pil_on_a_batch():
    """Every one of the 14 ops (batched) against PIL on every image of a small batch, as the
    reference's ``augment_list`` applies it: an exact match (PIL's uint8 results)."""
    from PIL import Image, ImageEnhance, ImageOps

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[1, :, :4] = 40  # some structure (ties) for equalize / autocontrast
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x]
    w, h = pil[0].size

    cases = {"autocontrast": (lambda im, v: ImageOps.autocontrast(im), [0.0, 0.5, 1.0]),
             "brightness": (lambda im, v: ImageEnhance.Brightness(im).enhance(v), [0.05, 0.5, 0.95]),
             "color": (lambda im, v: ImageEnhance.Color(im).enhance(v), [0.05, 0.5, 0.95]),
             "contrast": (lambda im, v: ImageEnhance.Contrast(im).enhance(v), [0.05, 0.5, 0.95]),
             "equalize": (lambda im, v: ImageOps.equalize(im), [0.0, 0.5, 1.0]),
             "identity": (lambda im, v: im, [0.0, 0.5, 1.0]),
             "posterize": (lambda im, v: ImageOps.posterize(im, int(v)), [4.2, 6.9, 8.0]),
             "rotate": (lambda im, v: im.rotate(v), [-30.0, 12.5, 30.0]),  # counter-clockwise for v > 0
             "sharpness": (lambda im, v: ImageEnhance.Sharpness(im).enhance(v), [0.05, 0.5, 0.95]),
             "shear_x": (lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)), [-0.3, 0.1, 0.3]),
             "shear_y": (lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)), [-0.3, 0.1, 0.3]),
             "solarize": (lambda im, v: ImageOps.solarize(im, v), [10.0, 128.0, 250.0]),
             "translate_x": (lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * w, 0, 1, 0)),
                             [-0.25, 0.0, 0.25]),
             "translate_y": (lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * h)),
                             [-0.3, 0.1, 0.25])}
    names = [o[0] for o in OPS]
    assert sorted(cases) == sorted(names)  # all 14
    for name, (ref, vals) in cases.items():
        op = names.index(name)
        params = {"ops": torch.tensor([[op, 5]] * 3), "mags": torch.tensor([[v, 0.0] for v in vals]),
                  "cutout": torch.zeros(3), "cutout_xy": torch.zeros(3, 2)}
        got = strong_augment(x, params)
        want = torch.stack([torch.from_numpy(np.array(ref(im, v))).permute(2, 0, 1) for im, v in zip(pil, vals)])
        assert torch.equal(got, want.float()), (name, (got - want.float()).abs().max().item())
        if name not in ("identity", "equalize"):  # the op does something on this batch (equalize: see below)
            assert not torch.equal(got, x.float()), name
    # equalize changes an image whose histogram is far from flat (values 0..63, 32×32: PIL's step > 0)
    skew = torch.randint(0, 64, (1, 3, 32, 32), generator=g, dtype=torch.uint8)
    params = {"ops": torch.tensor([[names.index("equalize"), 5]]), "mags": torch.zeros(1, 2),
              "cutout": torch.zeros(1), "cutout_xy": torch.zeros(1, 2)}
    want = torch.from_numpy(np.array(ImageOps.equalize(Image.fromarray(skew[0].permute(1, 2, 0).numpy()))))
    got = strong_augment(skew, params)
    assert torch.equal(got[0], want.permute(2, 0, 1).float()) and not torch.equal(got, skew.float())
    # cutout: a gray square of side 0.5·W at the chosen centre, nothing else changed
    params = {"ops": torch.tensor([[5, 5]] * 3), "mags": torch.zeros(3, 2),
              "cutout": torch.tensor([0.0, 0.25, 0.5]), "cutout_xy": torch.full((3, 2), 0.5)}
    got = strong_augment(x, params)
    assert torch.equal(got[0], x[0].float())
    assert torch.equal(got[2, :, 2:7, 2:7], torch.tensor([125.0, 123.0, 114.0]).view(3, 1, 1).expand(3, 5, 5))
    assert torch.equal(got[2, :, 0], x[2, :, 0].float())
    # the draw covers all ops with magnitudes in range
    p = draw_strong_params(4000, torch.Generator().manual_seed(1))
    assert set(p["ops"].flatten().tolist()) == set(range(len(OPS)))
    lo = torch.tensor([o[1] for o in OPS])[p["ops"]]
    hi = torch.tensor([o[2] for o in OPS])[p["ops"]]
    assert bool(((p["mags"] >= lo) & (p["mags"] <= hi)).all()) and float(p["cutout"].max()) < 0.5


def test_strong_view_file_split_is_refused(ds16):
    from kdbench.data.base import FileSplit

    split = FileSplit(paths=["a.png"], labels=torch.zeros(1, dtype=torch.long))
    with pytest.raises(KDBenchError, match="strong augmented view"):
        make_loader(ds16, split, 1, train=True, strong_view=True)


# ============================================================================ methods
def make_ctx(ds):
    def loader(split, bs, train, aligned=None, **options):
        return make_loader(ds, split, bs, train=train, seed=0, aligned=aligned, **options)

    return TrainContext(dataset=ds, train_split=ds.splits["train"], device=torch.device("cpu"),
                        batch_size=16, seed=0, make_loader=loader)


def build(method, ds, teacher=TEACHER, student=STUDENT, epochs=240, seed=0, prepare=True, **over):
    torch.manual_seed(seed)
    t = create_model(teacher, ds.num_classes)
    s = create_model(student, ds.num_classes)
    hp = method_hparams(method, teacher, student, overrides=SMALL)
    hp.update(over)
    d = get_method(method)(s, t, ds.num_classes, hp, epochs=epochs, input_size=ds.image_size)
    if prepare:
        d.prepare(make_ctx(ds))
    return d


def first_batch(ds, d, bs=16):
    ld = make_loader(ds, "train", bs, train=True, seed=0, aligned=d.aligned_tensors() or None, **d.loader_options())
    ld.set_epoch(0)
    return next(iter(ld))


def test_params_files_and_registered_names():
    from kdbench.config import load_yaml, project_root

    for m in METHODS_B:
        spec = load_yaml(project_root() / f"params/methods/{m}.yaml")
        assert set(spec) <= {"defaults", "types", "search", "pairs"}
        assert set(spec["defaults"]) <= set(spec["types"]), m
        assert set(spec["search"]) <= set(spec["defaults"]), m
        hp = method_hparams(m, TEACHER, STUDENT)
        cls = get_method(m)
        assert set(cls.hparam_names) <= set(hp) <= set(cls.hparam_names) | set(cls.optional_hparams)
    # the LS rows are the same classes with the option on, not copies
    for base in ("kd", "dkd", "mlkd", "ctkd"):
        ls = get_method(f"{base}_ls")
        assert issubclass(ls, get_method(base)) and ls.loss is get_method(base).loss
        assert method_hparams(f"{base}_ls", TEACHER, STUDENT)["logit_stand"] is True
        assert "logit_stand" not in method_hparams(base, TEACHER, STUDENT)  # kd's hash unchanged
    assert method_hparams("kd_ls", TEACHER, STUDENT)["kd_weight"] == 9
    assert method_hparams("kd_ls", "resnet110", "resnet20")["temperature"] == 4
    assert method_hparams("dkd_ls", "resnet56", "resnet20")["nckd_weight"] == 36
    assert method_hparams("reviewkd", "resnet32x4", "resnet8x4")["reviewkd_weight"] == 5
    assert method_hparams("reviewkd", "resnet56", "resnet20")["reviewkd_weight"] == 0.6
    with pytest.raises(KDBenchError):
        get_method("kd").check_hparams({"ce_weight": 1, "kd_weight": 1, "temperature": 1, "bogus": 1})


def test_method_terms_match_functionals(ds16):
    """Each method's terms are its weights times the public functionals."""
    for m in ("kd_ls", "dist", "mlkd_ls", "ctkd"):
        d = build(m, ds16)
        d.eval()
        b = first_batch(ds16, d)
        with torch.no_grad():
            terms = d.loss(b)
            zs, zt = d.student(b["image"]), d.teacher(b["image"])
        h = d.hparams
        if m == "kd_ls":
            assert terms["kd"].item() == pytest.approx(9 * np_kd(np_zscore(zs.double().numpy()),
                                                                 np_zscore(zt.double().numpy()), 2.0), rel=1e-5)
        elif m == "dist":
            assert terms["dist"].item() == pytest.approx(2 * KF.dist_loss(zs, zt, 1, 1, 4).item(), rel=1e-6)
        elif m == "mlkd_ls":
            with torch.no_grad():
                zss, zts = d.student(b["image_strong"]), d.teacher(b["image_strong"])
            want = KF.mlkd_terms(zs, zt, zss, zts, 2.0, logit_stand=True)
            for k in ("kd", "cc", "bc"):
                assert terms[k].item() == pytest.approx(9 * want[k].item(), rel=1e-5)
            ce = F.cross_entropy(zs, b["label"]) + F.cross_entropy(zss, b["label"])
            assert terms["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
        else:  # ctkd: T = 1 + 20·σ(1) at the start
            t = 1 + 20 / (1 + math.exp(-1))
            assert d.temperature().item() == pytest.approx(t, rel=1e-6)
            assert terms["kd"].item() == pytest.approx(h["kd_weight"] * KF.kd_loss(zs, zt, t).item(), rel=1e-5)


def test_ctkd_curriculum_and_gradient_reversal(ds16):
    d = build("ctkd", ds16, epochs=240, prepare=False)
    lams = []
    for e in (0, 4, 9, 10, 100):
        d.on_epoch_start(e)
        lams.append(d.reversal_strength())
    want = [(math.cos(i * math.pi / 10) + 1) / 2 - 1 for i in (1, 5, 10, 10, 10)]
    np.testing.assert_allclose(lams, want, atol=1e-12)
    d24 = build("ctkd", ds16, epochs=24, prepare=False)  # 10 of 240 -> 1 epoch: at -1 from the start
    d24.on_epoch_start(0)
    assert d24.reversal_strength() == pytest.approx(-1.0)
    # the temperature's gradient is the loss gradient times λ (reversed for λ < 0)
    d.on_epoch_start(4)
    lam = d.reversal_strength()
    b = first_batch(ds16, d)
    d.train()
    d.temperature_module.theta.grad = None
    d.loss(b)["kd"].backward()
    g_rev = d.temperature_module.theta.grad.clone()
    theta = d.temperature_module.theta.detach().clone().requires_grad_(True)
    with torch.no_grad():
        zs, zt = d.student(b["image"]), d.teacher(b["image"])
    t = 1 + 20 * torch.sigmoid(theta)[0]
    (g_plain,) = torch.autograd.grad(0.9 * KF.kd_loss(zs, zt, t), theta)
    assert g_rev.item() == pytest.approx(lam * g_plain.item(), rel=1e-3)
    assert any(p is d.temperature_module.theta for g in d.param_groups(5e-4) for p in g["params"])


def test_crd_negatives_and_memory_update(ds16):
    d = build("crd", ds16, nce_k=20)
    labels = d._labels
    index = torch.arange(16)
    torch.manual_seed(3)
    idx = d.sample_indices(index)
    assert idx.shape == (16, 21) and torch.equal(idx[:, 0], index)
    assert bool((labels[idx[:, 1:]] != labels[index][:, None]).all())  # other classes only
    for row in idx[:, 1:]:  # 20 <= #other-class rows (42): without replacement
        assert len(set(row.tolist())) == 20
    big = build("crd", ds16, nce_k=200)  # more than the other-class rows: with replacement
    torch.manual_seed(3)
    idx = big.sample_indices(index)
    assert bool((labels[idx[:, 1:]] != labels[index][:, None]).all())
    assert any(len(set(row.tolist())) < 200 for row in idx[:, 1:])  # repeats
    # one contrast step against a direct computation
    v_s = F.normalize(torch.randn(16, 128), dim=1)
    v_t = F.normalize(torch.randn(16, 128), dim=1)
    mem_s, mem_t = d.memory_student.clone(), d.memory_teacher.clone()
    d.train()
    torch.manual_seed(5)
    out_s, out_t = d.contrast(v_s, v_t, index)
    torch.manual_seed(5)
    idx = d.sample_indices(index)
    raw_s = torch.exp((mem_t[idx] * v_s[:, None]).sum(-1) / 0.07)
    raw_t = torch.exp((mem_s[idx] * v_t[:, None]).sum(-1) / 0.07)
    z_s, z_t = raw_s.mean() * 48, raw_t.mean() * 48
    assert torch.allclose(out_s, raw_s / z_s, rtol=1e-5) and torch.allclose(out_t, raw_t / z_t, rtol=1e-5)
    assert d.z_norm.tolist() == pytest.approx([z_s.item(), z_t.item()], rel=1e-5)
    upd = F.normalize(mem_s[index] * 0.5 + v_s * 0.5, dim=1)
    assert torch.allclose(d.memory_student[index], upd, atol=1e-6)
    assert torch.equal(d.memory_student[16:], mem_s[16:])
    # Z is fixed after the first step
    d.contrast(v_s, v_t, index)
    assert d.z_norm.tolist() == pytest.approx([z_s.item(), z_t.item()], rel=1e-5)


def test_preact_tap_recovers_pre_relu_outputs(ds16):
    from kdbench.methods.preact import PreactTap, margin_bns

    torch.manual_seed(0)
    net = create_model("resnet8", 8).eval()
    tap = PreactTap(net, 16)
    assert tap.tapped == [True, True, True]
    x = torch.randn(2, 3, 16, 16)
    with tap:
        f = net.forward_features(x)
        pre = tap.preacts(f.stages)
    for k, stage in enumerate(net.stages):  # recompute the last block by hand
        h = net.stem(x)
        for s in net.stages[:k]:
            h = s(h)
        for blk in list(stage)[:-1]:
            h = blk(h)
        blk = stage[-1]
        out = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h)))))
        out = out + (h if blk.shortcut is None else blk.shortcut(h))
        assert torch.allclose(pre[k], out, atol=1e-6) and (pre[k] < 0).any()
    assert [bn is s[-1].bn2 for bn, s in zip(margin_bns(net, 16, tap.tapped), net.stages)] == [True] * 3
    wrn = create_model("wrn_16_1", 8).eval()
    wtap = PreactTap(wrn, 16)
    # pre-activation blocks: stages 0, 1 output the pre-ReLU stream; the last stage ends in
    # the network's final BN-ReLU
    assert wtap.tapped == [False, False, True]
    bns = margin_bns(wrn, 16, wtap.tapped)
    assert bns[0] is wrn.stages[1][0].bn1 and bns[1] is wrn.stages[2][0].bn1 and bns[2] is wrn.stages[2][-2]


#: a timm teacher (4 stages, 64..512 channels, 1×1 maps at the end) for a CIFAR student
PAIRS = {"cifar": (TEACHER, STUDENT, "ds16"), "timm": ("timm:resnet10t", STUDENT, "ds16")}
#: smaller steps where the reference weights are large (kd weight 9, CRD's NCE at τ = 0.07)
LR = {"kd_ls": 0.005, "dkd_ls": 0.002, "mlkd_ls": 0.001, "ctkd_ls": 0.005, "dist": 0.01, "crd": 0.003}


@pytest.mark.parametrize("pair", ["cifar", "timm"])
@pytest.mark.parametrize("method", METHODS_B)
def test_trains_finite_decreasing_teacher_frozen(method, pair, request):
    teacher, student, ds_name = PAIRS[pair]
    ds = request.getfixturevalue(ds_name)
    d = build(method, ds, teacher=teacher, student=student, epochs=2)
    batch = first_batch(ds, d)
    opt = torch.optim.SGD(d.param_groups(5e-4), lr=LR.get(method, 0.02), momentum=0.9)
    d.train()
    d.on_epoch_start(1)  # past the (scaled) warm-ups
    if method == "crd":  # fill the banks first (gradient-free pass): with a random bank the NCE
        with torch.no_grad():  # loss first rises while the bank fills, as the reference's does
            for b in make_loader(ds, "train", 16, train=False):
                d.loss(b)
    totals = []
    for _ in range(8):
        torch.manual_seed(0)  # crd: the same negatives every step
        terms = d.loss(batch)
        total = sum(terms.values())
        assert all(bool(torch.isfinite(v)) for v in terms.values()), terms
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-2:]) < np.mean(totals[:2]), totals
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training


@pytest.mark.parametrize("method", ["crd", "ctkd", "reviewkd", "ofd", "mlkd"])
def test_trainable_state_round_trip(method, ds16):
    d1 = build(method, ds16, epochs=2)
    batch = first_batch(ds16, d1)
    opt = torch.optim.SGD(d1.param_groups(0.0), lr=0.01)
    d1.train()
    for epoch in range(2):
        d1.on_epoch_start(epoch)
        torch.manual_seed(epoch)
        terms = d1.loss(batch)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        d1.on_epoch_end(epoch)
    state = d1.trainable_state()
    extra = {"crd": ["memory_student", "memory_teacher", "z_norm", "embed_student.linear.weight"],
             "ctkd": ["temperature_module.theta"], "reviewkd": ["abfs.0.conv1.0.weight"],
             "ofd": ["connectors.0.0.weight"], "mlkd": []}[method]
    for k in extra:
        assert k in state, k
    if method == "ctkd":
        assert float(state["temperature_module.theta"]) != 1.0  # it trained
    d2 = build(method, ds16, epochs=2, seed=1)  # another init; prepare (crd: new random banks)
    d2.teacher.load_state_dict(d1.teacher.state_dict())
    d2.load_trainable_state(state)
    for k, v in d2.trainable_state().items():
        assert torch.equal(v, state[k]), k
    for d in (d1, d2):
        d.eval()
        d.on_epoch_start(1)
    torch.manual_seed(0)
    l1 = d1.loss(batch)
    torch.manual_seed(0)
    l2 = d2.loss(batch)
    for k in l1:
        assert torch.allclose(l1[k], l2[k], rtol=1e-6, atol=1e-7), k


def test_reviewkd_and_ofd_terms_by_hand(ds16):
    from kdbench.methods.fcfd import frozen_bn_stats

    d = build("reviewkd", ds16, epochs=240)
    d.eval()
    d.on_epoch_start(4)  # warm-up 20: factor 5/20
    b = first_batch(ds16, d)
    x = b["image"]
    with torch.no_grad():
        terms = d.loss(b)
        fs = d.student.forward_features(x)
        levels, ft = d.teacher_levels(x)
        t = d.teacher
        h = t.stem(x)
        pre = []
        for stage in t.stages:  # the last block's sum before its final ReLU
            for blk in list(stage)[:-1]:
                h = blk(h)
            blk = stage[-1]
            out = blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h)))))
            pre.append(out + (h if blk.shortcut is None else blk.shortcut(h)))
            h = F.relu(pre[-1])
        for got, want in zip(levels[:-1], pre):
            assert torch.allclose(got, want, atol=1e-6)
        assert (levels[0] < 0).any() and torch.equal(levels[-1][:, :, 0, 0], ft.embedding)
        # ABF by hand at the deepest two levels: no fusion, then attention fusion
        s_levels = list(fs.stages) + [fs.embedding[:, :, None, None]]
        deep, res = d.abfs[3].conv2(d.abfs[3].conv1(s_levels[3])), d.abfs[3].conv1(s_levels[3])
        x2 = d.abfs[2].conv1(s_levels[2])
        r = F.interpolate(res, size=x2.shape[-2:], mode="nearest")
        att = d.abfs[2].att_conv(torch.cat([x2, r], 1))
        mid = d.abfs[2].conv2(x2 * att[:, :1] + r * att[:, 1:])
        outs = d.review(s_levels)
        assert torch.allclose(outs[3], deep, atol=1e-6) and torch.allclose(outs[2], mid, atol=1e-6)
        want = KF.hcl_loss(outs, levels).item() * 5 / 20
    assert terms["reviewkd"].item() == pytest.approx(want, rel=1e-5)  # weight 1 for this pair

    o = build("ofd", ds16)
    o.train()
    before = {k: v.clone() for k, v in o.teacher.state_dict().items()}
    b = first_batch(ds16, o)
    terms = o.loss(b)
    assert all(torch.equal(v, before[k]) for k, v in o.teacher.state_dict().items())  # teacher unchanged
    assert not o.teacher.training
    with torch.no_grad():
        with o.student_tap:
            fs = o.student.forward_features(b["image"])
            s_pre = o.student_tap.preacts(fs.stages)
        o.teacher.train()
        with frozen_bn_stats(o.teacher), o.teacher_tap:  # reference: teacher BN on batch statistics
            t_pre = o.teacher_tap.preacts(o.teacher.forward_features(b["image"]).stages)
        o.teacher.eval()
        want = 0.0
        for pos, (i, j) in enumerate(zip(o.s_idx, o.t_idx)):
            bn = o.teacher.stages[j][-1].bn2
            margin = KF.ofd_margin(bn.weight, bn.bias).float()
            s = o.connectors[pos](s_pre[i])
            want += KF.ofd_loss(s, F.adaptive_avg_pool2d(t_pre[j], s.shape[-2:]), margin).item() / 2 ** (2 - pos)
    assert terms["ofd"].item() == pytest.approx(0.001 * want, rel=1e-5)


def test_check_pair_and_bad_input(ds16):
    from kdbench.methods.base import PairError

    with torch.device("meta"):
        t, s = create_model("resnet14", 8), create_model("resnet8", 8)
        t.arch, s.arch = "resnet14", "resnet8"
    get_method("ofd").check_pair(t, s, method_hparams("ofd", "resnet14", "resnet8"))
    with torch.device("meta"):  # linear-bottleneck stages: no BN before a ReLU for the margins
        mv2 = create_model("mobilenetv2", 8)
        mv2.arch = "mobilenetv2"
    with pytest.raises(PairError, match=r"'ofd' cannot run on pair mobilenetv2->resnet8: teacher stage"):
        get_method("ofd").check_pair(mv2, s, method_hparams("ofd", "mobilenetv2", "resnet8"))
    from kdbench.methods.preact import PreactTap

    for arch in ("wrn_16_1", "mobilenetv2", "resnet8"):  # the meta probe decides as the real one
        with torch.device("meta"):
            meta = create_model(arch, 8)
        assert PreactTap(meta, 16).tapped == PreactTap(create_model(arch, 8), 16).tapped, arch
    with pytest.raises(KDBenchError, match="teacher_bn"):
        get_method("ofd").check_pair(t, s, {**method_hparams("ofd", "resnet14", "resnet8"), "teacher_bn": "x"})
    assert issubclass(PairError, KDBenchError)
    d = build("mlkd", ds16, prepare=False)
    with pytest.raises(KDBenchError, match="strong view"):
        d.loss(next(iter(make_loader(ds16, "train", 8, train=True))))
    with pytest.raises(KDBenchError, match="prepare"):
        build("crd", ds16, prepare=False).loss(first_batch(ds16, d))


# ============================================================================ engine resume
def test_crd_interrupted_run_resumes_to_identical_numbers(tmp_path):
    prof = validate_profile(tiny_profile(tmp_path, datasets={"shapes": {"image_size": 16, "n_train": 96, "n_val": 16,
                                                                       "n_test": 16, "n_test_ood": 16, "seed": 0}},
                                         teacher_train={"epochs": 1, "batch_size": 32},
                                         student_train={"epochs": 2, "batch_size": 32},
                                         method_params={"crd": {"nce_k": 32}}))
    results = Path(prof["results_dir"])
    tdir = results / "teachers/shapes/resnet14/s0"
    trainer.run(teacher_config(prof, "shapes", "resnet14", 0), tdir, results_dir=results)
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "crd", 0)
    full = trainer.run(cfg, tmp_path / "full", results_dir=results, teacher_path=tdir / "model.pt")
    part = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tdir / "model.pt", max_epochs=1)
    assert part == {"interrupted_after_epoch": 1}
    ckpt = torch.load(tmp_path / "part/checkpoint.pt", weights_only=True)
    assert ckpt["distiller"]["memory_student"].shape == (96, 128) and float(ckpt["distiller"]["z_norm"][0]) > 0
    resumed = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tdir / "model.pt")
    for key in ("top1", "top1_sel", "val_top1"):
        assert resumed[key] == full[key]
    a = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part/model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the trainer hands mlkd's loader options to the training loader (weak + strong views)
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "mlkd", 0)
    out = trainer.run(cfg, tmp_path / "mlkd", results_dir=results, teacher_path=tdir / "model.pt", max_epochs=1)
    assert out == {"interrupted_after_epoch": 1}
    keys = torch.load(tmp_path / "mlkd/checkpoint.pt", weights_only=True)["history_keys"]
    assert {"loss_ce", "loss_kd", "loss_cc", "loss_bc"} <= set(keys)
