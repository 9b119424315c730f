"""Every registered method's loss wiring, by value.

For each of kdbench's methods: build it on the tiny CIFAR pair (resnet14 -> resnet8 at
16 px: three stages each, so student stage k meets teacher stage k), with every
``*_weight`` hyperparameter set to its own distinctive value (``WEIGHTS``), and check
that each named loss term equals that weight times the public functional of
:mod:`kdbench.functional` on the right tensors (stage outputs, pooled embeddings,
logits), recomputed here from the networks' own forward passes with the stage indices
written out. The functionals themselves are checked against float64 numpy references
elsewhere (test_functional, test_methods_feature_relational, test_methods_crd_reviewkd_ofd_logit, test_methods_tdd_cid_fcfd_e2kd); this module
checks what a method feeds them and how it weighs them. A dropped weight, a hard-coded
one, two weights swapped, a wrong stage, a missing term or an extra one fails here.

``CHECKS`` has one entry per method: a method registered in kdbench without one fails
``test_terms_are_weights_times_functionals`` (and the coverage test) by name.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.hparams import method_hparams
from kdbench.methods import get_method, iter_method_names
from kdbench.models import create_model
from tests.test_methods_crd_reviewkd_ofd_logit import first_batch, make_ctx
from tests.tiny import ds16, one_thread  # noqa: F401  (fixtures; one_thread is autouse)

TEACHER, STUDENT = "resnet14", "resnet8"
#: student stage -> teacher stage on this pair (same relative depth), written out
STAGES = [(0, 0), (1, 1), (2, 2)]
#: test-size overrides (CRD's negatives per image are for 50k images)
SMALL = {"crd": {"nce_k": 32}}
#: distinctive weights, given out to a method's ``*_weight`` names in sorted order: no two
#: equal, none 0 or 1, so a dropped, hard-coded or swapped weight changes a term's value
WEIGHTS = (1.3, 0.7, 2.1, 1.7, 0.45, 2.9, 1.15)


def kdbench_methods():
    """Every method kdbench itself registers (entry-point plugins are not ours to check)."""
    return [n for n in iter_method_names() if get_method(n).__module__.startswith("kdbench.")]


def distinct_weights(method):
    names = sorted(k for k in method_hparams(method, TEACHER, STUDENT, overrides=SMALL) if k.endswith("_weight"))
    assert len(names) <= len(WEIGHTS), f"{method}: add more WEIGHTS"
    return dict(zip(names, WEIGHTS))


def build(method, ds):
    torch.manual_seed(0)
    t, s = create_model(TEACHER, ds.num_classes), create_model(STUDENT, ds.num_classes)
    hp = {**method_hparams(method, TEACHER, STUDENT, overrides=SMALL), **distinct_weights(method)}
    d = get_method(method)(s, t, ds.num_classes, hp, epochs=240, input_size=ds.image_size)
    d.prepare(make_ctx(ds))
    return d


def feats(d, x):
    with torch.no_grad():
        return d.student.forward_features(x), d.teacher.forward_features(x)


def run_loss(d, b):
    torch.manual_seed(0)  # methods that draw (crd's negatives, fcfd's paths) draw the same again
    return d.loss(b)


CHECKS = {}


def checks(*methods):
    def add(fn):
        for m in methods:
            CHECKS[m] = fn
        return fn

    return add


# ----------------------------------------------------------------------------- logit methods
@checks("vanilla")
def _vanilla(d, b, w):
    fs, _ = feats(d, b["image"])
    return run_loss(d, b), {"ce": F.cross_entropy(fs.logits, b["label"])}


@checks("kd", "kd_ls")
def _kd(d, b, w):
    fs, ft = feats(d, b["image"])
    ls = d.name.endswith("_ls")
    return run_loss(d, b), {
        "ce": w["ce_weight"] * F.cross_entropy(fs.logits, b["label"]),
        "kd": w["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, d.hparams["temperature"], logit_stand=ls)}


@checks("dkd", "dkd_ls")
def _dkd(d, b, w):
    h = d.hparams
    d.on_epoch_start(4)  # 5 of the 20 warm-up epochs (240-epoch run: no scaling)
    fs, ft = feats(d, b["image"])
    dkd = KF.dkd_loss(fs.logits, ft.logits, b["label"], w["tckd_weight"], w["nckd_weight"], h["temperature"],
                      logit_stand=d.name.endswith("_ls"))
    return run_loss(d, b), {"ce": w["ce_weight"] * F.cross_entropy(fs.logits, b["label"]),
                            "dkd": 5 / h["warmup_epochs"] * dkd}


@checks("dist")
def _dist(d, b, w):
    fs, ft = feats(d, b["image"])
    dist = KF.dist_loss(fs.logits, ft.logits, beta=w["inter_weight"], gamma=w["intra_weight"],
                        tau=d.hparams["temperature"])
    return run_loss(d, b), {"ce": w["ce_weight"] * F.cross_entropy(fs.logits, b["label"]),
                            "dist": w["dist_weight"] * dist}


@checks("ctkd", "ctkd_ls")
def _ctkd(d, b, w):
    h = d.hparams
    fs, ft = feats(d, b["image"])
    t = h["temp_start"] + h["temp_range"] / (1 + math.exp(-h["temp_init"]))  # θ at its initial value
    return run_loss(d, b), {
        "ce": w["ce_weight"] * F.cross_entropy(fs.logits, b["label"]),
        "kd": w["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, t, logit_stand=d.name.endswith("_ls"))}


@checks("mlkd", "mlkd_ls")
def _mlkd(d, b, w):
    y = b["label"]
    with torch.no_grad():
        zsw, zss = d.student(b["image"]), d.student(b["image_strong"])
        ztw, zts = d.teacher(b["image"]), d.teacher(b["image_strong"])
    terms = KF.mlkd_terms(zsw, ztw, zss, zts, d.hparams["temperature"], logit_stand=d.name.endswith("_ls"))
    return run_loss(d, b), {"ce": w["ce_weight"] * (F.cross_entropy(zsw, y) + F.cross_entropy(zss, y)),
                            **{k: w["kd_weight"] * v for k, v in terms.items()}}


# ----------------------------------------------------------------------------- feature methods
def ce_term(w, fs, b):
    return w["ce_weight"] * F.cross_entropy(fs.logits, b["label"])


@checks("fitnet")
def _fitnet(d, b, w):
    fs, ft = feats(d, b["image"])  # the middle stage of three
    with torch.no_grad():
        hint = F.mse_loss(d.regressor(fs.stages[1]), ft.stages[1])
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "hint": w["hint_weight"] * hint}


@checks("at")
def _at(d, b, w):
    fs, ft = feats(d, b["image"])
    at = sum(KF.at_loss(fs.stages[i], ft.stages[j], p=d.hparams["p"]) for i, j in STAGES)
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "at": w["at_weight"] * at}


@checks("nst")
def _nst(d, b, w):
    fs, ft = feats(d, b["image"])
    nst = sum(KF.nst_loss(fs.stages[i], ft.stages[j]) for i, j in STAGES)
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "nst": w["nst_weight"] * nst}


@checks("pkt")
def _pkt(d, b, w):
    fs, ft = feats(d, b["image"])
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "pkt": w["pkt_weight"] * KF.pkt_loss(fs.embedding, ft.embedding)}


@checks("rkd")
def _rkd(d, b, w):
    h = d.hparams
    fs, ft = feats(d, b["image"])
    rkd = KF.rkd_loss(fs.embedding, ft.embedding, distance_weight=w["distance_weight"],
                      angle_weight=w["angle_weight"], squared=bool(h["squared"]), eps=h["eps"])
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "rkd": w["rkd_weight"] * rkd}


@checks("sp")
def _sp(d, b, w):
    fs, ft = feats(d, b["image"])  # the last stage
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "sp": w["sp_weight"] * KF.sp_loss(fs.stages[2], ft.stages[2])}


@checks("kdsvd")
def _kdsvd(d, b, w):
    fs, ft = feats(d, b["image"])
    svd = KF.kdsvd_loss([fs.stages[i] for i, _ in STAGES], [ft.stages[j] for _, j in STAGES], k=int(d.hparams["k"]))
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "kdsvd": w["kdsvd_weight"] * svd}


@checks("vid")
def _vid(d, b, w):
    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        vid = sum(KF.vid_loss(d.regressors[k](fs.stages[i]), d.log_scales[k], ft.stages[j], eps=d.hparams["eps"])
                  for k, (i, j) in enumerate(STAGES))
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "vid": w["vid_weight"] * vid}


@checks("cc")
def _cc(d, b, w):
    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        cc = KF.cc_loss(d.embed_student(fs.embedding), d.embed_teacher(ft.embedding))
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "cc": w["cc_weight"] * cc}


@checks("crd")
def _crd(d, b, w):
    fs, ft = feats(d, b["image"])
    terms = run_loss(d, b)  # eval mode: the banks are not updated, Z is fixed by this first call
    with torch.no_grad():
        torch.manual_seed(0)  # the same negatives
        out_s, out_t = d.contrast(d.embed_student(fs.embedding), d.embed_teacher(ft.embedding), b["index"])
    n = len(d._labels)
    return terms, {"ce": ce_term(w, fs, b), "crd": w["crd_weight"] * (KF.crd_nce_loss(out_s, n) + KF.crd_nce_loss(out_t, n))}


@checks("reviewkd")
def _reviewkd(d, b, w):
    d.on_epoch_start(4)  # 5 of the 20 warm-up epochs
    fs, _ = feats(d, b["image"])
    with torch.no_grad():
        levels, _ = d.teacher_levels(b["image"])  # pre-ReLU teacher levels: checked by hand in test_methods_crd_reviewkd_ofd_logit
        outs = d.review([fs.stages[0], fs.stages[1], fs.stages[2], fs.embedding[:, :, None, None]])
    hcl = KF.hcl_loss(outs, levels)
    return run_loss(d, b), {"ce": ce_term(w, fs, b),
                            "reviewkd": w["reviewkd_weight"] * 5 / d.hparams["warmup_epochs"] * hcl}


@checks("ofd")
def _ofd(d, b, w):
    x = b["image"]
    with torch.no_grad():
        with d.student_tap:
            fs = d.student.forward_features(x)
            s_pre = d.student_tap.preacts(fs.stages)
        t_pre = d.teacher_preacts(x)  # checked against a hand forward in test_methods_crd_reviewkd_ofd_logit
        total = 0.0
        for pos, (i, j) in enumerate(STAGES):  # the deepest stage weighs 1, the ones before 1/2, 1/4
            bn = d.teacher.stages[j][-1].bn2
            s = d.connectors[pos](s_pre[i])
            t = F.adaptive_avg_pool2d(t_pre[j], s.shape[-2:])
            total = total + KF.ofd_loss(s, t, KF.ofd_margin(bn.weight, bn.bias).float()) / 2 ** (2 - pos)
    return run_loss(d, b), {"ce": ce_term(w, fs, b), "ofd": w["feat_weight"] * total}


# ----------------------------------------------------------------------------- two-stage methods
def stem_and_stage_outputs(net, x):
    h = net.stem(x)
    outs = [h]
    for stage in net.stages:
        h = stage(h)
        outs.append(h)
    return outs


def with_init(d, b):
    """The classification-stage terms and the initialisation stage's loss (``init``)."""
    terms = run_loss(d, b)
    with torch.no_grad():
        return {**terms, "init": d.init_loss(b)}


@checks("fsp")
def _fsp(d, b, w):
    x = b["image"]
    fs, _ = feats(d, b["image"])
    with torch.no_grad():
        gs, gt = stem_and_stage_outputs(d.student, x), stem_and_stage_outputs(d.teacher, x)
    init = KF.fsp_loss([gs[0]] + [gs[i + 1] for i, _ in STAGES], [gt[0]] + [gt[j + 1] for _, j in STAGES])
    return with_init(d, b), {"ce": ce_term(w, fs, b), "init": init}


@checks("ab")
def _ab(d, b, w):
    from kdbench.methods.ab import stage_preacts  # pre-ReLU outputs: checked in test_methods_feature_relational

    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        pre, _ = stage_preacts(d.student, b["image"])
        init = KF.ab_loss([d.connectors[k](pre[i]) for k, (i, _) in enumerate(STAGES)],
                          [ft.stages[j] for _, j in STAGES], margin=float(d.hparams["margin"]))
    return with_init(d, b), {"ce": ce_term(w, fs, b), "init": init}


@checks("ft")
def _ft(d, b, w):
    h = d.hparams
    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        factor = KF.ft_loss(d.translator(fs.stages[2]), d.paraphraser.encoder(ft.stages[2]), p1=h["p1"], p2=h["p2"])
        init = F.mse_loss(d.paraphraser(ft.stages[2])[1], ft.stages[2])
    return with_init(d, b), {"ce": ce_term(w, fs, b), "ft": w["ft_weight"] * factor, "init": init}


# ----------------------------------------------------------------------------- seed methods
@checks("tdd")
def _tdd(d, b, w):
    y = b["label"]
    fs, ft = feats(d, b["image"])
    tree = 0.0
    with torch.no_grad():
        for slot, head in enumerate(d.tree_heads):  # a head on student stage `slot` per teacher stage
            mapping = d.tree_maps[slot]
            weight = 1.0 / torch.bincount(mapping).double()  # super-class j weighs 1/|j|
            tree = tree + F.cross_entropy(head(fs.stages[slot]), mapping[y], weight=weight.float())
    return run_loss(d, b), {
        "ce": ce_term(w, fs, b), "tree": w["tree_weight"] * tree,
        "kd": w["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, d.hparams["temperature"])}


@checks("cid")
def _cid(d, b, w):
    h = d.hparams
    d.on_epoch_start(d.warmup)  # past the warm-up, prototypes installed: the intervened CE is on
    with torch.no_grad():
        d.prototypes.copy_(torch.randn(d.prototypes.shape, generator=torch.Generator().manual_seed(1)))
    d.prototypes_ready.fill_(True)
    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        p = F.softmax(fs.logits / h["temperature"], dim=1)
        y_hat = d.intervention(torch.cat([fs.embedding, p @ d.prototypes], dim=1))
        sample = KF.cid_sample_loss(d.regressor(fs.embedding), ft.embedding)
    return run_loss(d, b), {
        "ce": w["ce_weight"] * F.cross_entropy(y_hat, b["label"]),
        "kd": w["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, h["temperature"]),
        "sample": w["sample_weight"] * sample,
        "class": w["class_weight"] * KF.cid_class_loss(fs.embedding, ft.embedding, b["label"])}


@checks("fcfd")
def _fcfd(d, b, w):
    h = d.hparams
    paths = [("s2t", 0), ("t2s", 1)]
    d.draw_paths = lambda: paths  # the draw itself: test_methods_tdd_cid_fcfd_e2kd.py::test_fcfd_ramp_and_paths
    fs, ft = feats(d, b["image"])
    with torch.no_grad():
        bridged = [d.s2t[k](fs.stages[i]) for k, (i, _) in enumerate(STAGES)]
        app = sum(F.mse_loss(bridged[k], ft.stages[j]) for k, (_, j) in enumerate(STAGES))
        app = app + F.mse_loss(F.relu(bridged[2]).mean((2, 3)), F.relu(ft.stages[2]).mean((2, 3)))
        # the mixed paths by hand: s2t after stage 0 (teacher stages 1, 2 + head), t2s after stage 1
        h1 = d.teacher.stages[1](bridged[0])
        h2 = d.teacher.stages[2](h1)
        path_mse = (F.mse_loss(h1, ft.stages[1]) + F.mse_loss(h2, ft.stages[2])
                    + F.mse_loss(F.relu(h2).mean((2, 3)), F.relu(ft.stages[2]).mean((2, 3))))
        z_g = d.student.head(d.student.stages[2](d.t2s[1](ft.stages[1])))
        T = h["temperature"]
        path_kd = KF.kd_loss(d.teacher.head(h2), ft.logits, T) + KF.kd_loss(z_g, ft.logits, T)
    ramp = 1 / h["ramp_epochs"]  # epoch 0
    return run_loss(d, b), {
        "ce": ce_term(w, fs, b), "kd": w["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, T),
        "path_kd": w["path_kd_weight"] * path_kd, "appearance": w["feature_weight"] * ramp * app,
        "path_feature": w["feature_weight"] * ramp * path_mse}


def teacher_cam(d, x):
    with torch.no_grad():
        last = d.teacher.forward_features(x).stages[-1]
    last = last.requires_grad_(True)
    z_t = d.teacher.forward_from(2, last)
    return z_t.detach(), KF.gradcam(last, z_t, z_t.argmax(1), size=x.shape[-2:])


@checks("e2kd", "e2kd_kdmatched", "e2kd_frozen")
def _e2kd(d, b, w):
    x, y = b["image"], b["label"]
    if d.name == "e2kd_frozen":  # the teacher's logits and maps stored by prepare (un-augmented images)
        z_t, cam_t = d.stored_logits[b["index"]], b["teacher_cam"].float()
    else:
        z_t, cam_t = teacher_cam(d, x)
    fs = d.student.forward_features(x)  # in the graph: Grad-CAM differentiates the logits
    cam_s = KF.gradcam(fs.stages[2], fs.logits, z_t.argmax(1), size=x.shape[-2:])
    expl = (1 - KF.explanation_cosine(cam_s, cam_t)).mean()
    return run_loss(d, b), {
        "ce": w["ce_weight"] * F.cross_entropy(fs.logits.detach(), y),
        "kd": w["kd_weight"] * KF.kd_loss(fs.logits.detach(), z_t, d.hparams["temperature"]),
        "explanation": w["explanation_weight"] * expl}


# ----------------------------------------------------------------------------- the tests
def test_every_registered_method_has_a_wiring_check():
    names = kdbench_methods()
    missing = sorted(set(names) - set(CHECKS))
    assert not missing, f"no by-value wiring check for method(s) {missing}: add one to CHECKS in {__name__}"
    assert sorted(CHECKS) == sorted(names), f"checks for unregistered methods: {sorted(set(CHECKS) - set(names))}"
    assert len(names) >= 31


@pytest.mark.parametrize("method", kdbench_methods())
def test_terms_are_weights_times_functionals(method, ds16):
    assert method in CHECKS, f"method {method!r} has no by-value wiring check: add one to CHECKS in {__name__}"
    d = build(method, ds16)
    assert (d.student.num_stages, d.teacher.num_stages) == (3, 3)  # STAGES is written for this pair
    d.eval()
    b = first_batch(ds16, d)
    w = distinct_weights(method)
    got, want = CHECKS[method](d, b, w)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        g, e = float(got[name].detach()), float(want[name])
        assert abs(e) > 1e-6, f"{method}.{name}: the expected value is ~0, the check cannot see a weight"
        assert g == pytest.approx(e, rel=1e-5), f"{method}.{name}: got {g}, want {e}"
