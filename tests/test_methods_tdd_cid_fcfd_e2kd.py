"""The four seed methods (tdd, cid, fcfd, e2kd/e2kd_frozen) against the spec.

Tiny models (resnet14 -> resnet8 at 16 px, a timm pair at 32 px), tiny ``shapes`` data.
Loss terms are checked against independent numpy / hand computations.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.config import load_yaml, project_root
from kdbench.hparams import method_hparams
from kdbench.data.loader import make_loader
from kdbench.errors import KDBenchError
from kdbench.methods import TrainContext, get_method
from kdbench.methods.base import PairError
from kdbench.methods.fcfd import frozen_bn_stats
from kdbench.methods.tdd import derive_partition, teacher_partitions
from kdbench.models import create_model
from tests.tiny import ds16, ds32, one_thread  # noqa: F401  (fixtures; one_thread is autouse)
from tests.numpy_reference import np_kd, np_softmax

SEED_METHODS = ["tdd", "cid", "fcfd", "e2kd", "e2kd_frozen"]
TEACHER, STUDENT = "resnet14", "resnet8"


# ----------------------------------------------------------------------------- helpers
def make_ctx(ds, batch_size=16):
    def loader(split, bs, train, aligned=None):
        return make_loader(ds, split, bs, train=train, seed=0, aligned=aligned)

    return TrainContext(dataset=ds, train_split=ds.splits["train"], device=torch.device("cpu"),
                        batch_size=batch_size, seed=0, make_loader=loader)


def build(method, ds, teacher=TEACHER, student=STUDENT, epochs=240, seed=0, prepare=True, **hp_over):
    torch.manual_seed(seed)
    t = create_model(teacher, ds.num_classes)
    s = create_model(student, ds.num_classes)
    hp = method_hparams(method, teacher, student)
    hp.update(hp_over)
    d = get_method(method)(s, t, ds.num_classes, hp, epochs=epochs, input_size=ds.image_size)
    if prepare:
        d.prepare(make_ctx(ds))
    return d


def first_batch(ds, d=None, bs=16, train=True):
    aligned = (d.aligned_tensors() or None) if d is not None else None
    return next(iter(make_loader(ds, "train", bs, train=train, seed=0, aligned=aligned)))


def np64(t):
    return t.detach().double().cpu().numpy()


def np_ce(z, y, weight=None):
    logp = np.log(np_softmax(z))
    nll = -logp[np.arange(len(y)), y]
    w = np.ones(len(y)) if weight is None else weight[y]
    return float((w * nll).sum() / w.sum())


# ----------------------------------------------------------------------------- params
def test_params_files_validate_and_share_kd_weights():
    kd = load_yaml(project_root() / "params/methods/kd.yaml")["defaults"]
    for m in SEED_METHODS:
        hp = method_hparams(m, TEACHER, STUDENT)
        assert set(hp) == set(get_method(m).hparam_names)
    for m in ("tdd", "e2kd_kdmatched"):  # kd's weights, so the difference isolates the extra term
        hp = method_hparams(m, TEACHER, STUDENT)
        assert {k: hp[k] for k in kd} == kd
    for m in ("e2kd", "e2kd_frozen"):  # the paper's form (reference sweeps): no CE, KD weight 1
        hp = method_hparams(m, TEACHER, STUDENT)
        assert hp["ce_weight"] == 0 and hp["kd_weight"] == 1 and hp["temperature"] in (1, 5)
        assert hp["explanation_weight"] in (1, 5, 10)
    assert get_method("e2kd_kdmatched").__mro__[1] is get_method("e2kd")
    assert method_hparams("cid", "wrn_40_2", "wrn_16_2")["sample_weight"] == 65
    assert method_hparams("cid", "resnet50", "mobilenetv2")["class_weight"] == 0.1
    assert method_hparams("fcfd", "resnet56", "resnet20")["feature_weight"] == 0.02
    assert method_hparams("fcfd", "wrn_40_2", "wrn_16_2")["path_kd_weight"] == 0.2
    assert method_hparams("fcfd", "resnet32x4", "shufflenetv2")["temperature"] == 8
    assert method_hparams("fcfd", TEACHER, STUDENT)["feature_weight"] == 5


# ----------------------------------------------------------------------------- tdd
def _two_group_features():
    """4 classes; Ward groups {0,1} and {2,3}; the 20 images nearest to node {0,1}'s
    mean (0, .5) are all of classes 2/3 and vice versa (see the numbers), so both nodes
    have purity 0; the leaves' and root's purity are irrelevant (leaf: always a group)."""
    pts = {0: [(50, 0)] * 10 + [(-50, 0)] * 10,      # mean (0, 0)
           1: [(50, 2)] * 10 + [(-50, 0)] * 10,      # mean (0, 1)
           2: [(0, 0)] * 10 + [(100, 0)] * 10,       # mean (50, 0)
           3: [(0, 1)] * 10 + [(100, 1)] * 10}       # mean (50, 1)
    feats = torch.tensor([p for k in range(4) for p in pts[k]], dtype=torch.float32)
    labels = torch.tensor([k for k in range(4) for _ in pts[k]])
    return feats, labels


def test_tdd_partition_known_answer_and_threshold():
    feats, labels = _two_group_features()
    part, purity = derive_partition(feats, labels, 4, purity_k=20, purity_threshold=0.2)
    assert sorted(map(sorted, part)) == [[0, 1], [2, 3]]
    assert purity == [0.0, 0.0]
    # threshold 0: no node is below it -> walk to the leaves
    part0, _ = derive_partition(feats, labels, 4, purity_k=20, purity_threshold=0.0)
    assert sorted(part0) == [[0], [1], [2], [3]]
    # above 1: even the root (purity 1) stops -> one super-class
    part1, purity1 = derive_partition(feats, labels, 4, purity_k=20, purity_threshold=1.01)
    assert part1 == [[0, 1, 2, 3]] and purity1 == [1.0]


def test_tdd_partition_separated_classes_and_purity_k():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0], [0, 30], [30, 0], [30, 30]])
    labels = torch.arange(40) % 4
    feats = centers[labels] + 0.1 * torch.randn(40, 2, generator=g)
    part, purity = derive_partition(feats, labels, 4, purity_k=20, purity_threshold=0.2)
    assert sorted(part) == [[0], [1], [2], [3]]
    assert purity == [0.5] * 4  # 10 images per class: 10 of the 20 nearest are in the leaf
    _, purity5 = derive_partition(feats, labels, 4, purity_k=5, purity_threshold=0.2)
    assert purity5 == [1.0] * 4


def test_tdd_tree_loss_is_weighted_ce(ds16):
    d = build("tdd", ds16, prepare=False)
    parts = [[[0, 1, 2], [3], [4, 5], [6, 7]], [[0], [1], [2], [3], [4, 5, 6, 7]], [[k] for k in range(8)]]
    d.set_partitions(parts)
    assert [m[-1].out_features for m in d.tree_heads] == [4, 5, 8]  # every stage, the last included
    d.eval()
    batch = first_batch(ds16)
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        fs = d.student.forward_features(x)
        got = float(d.tree_loss(fs.stages, y))
        want = 0.0
        for slot, part in enumerate(parts):
            mapping = np.empty(8, dtype=np.int64)
            for j, group in enumerate(part):
                mapping[group] = j
            weight = np.array([1.0 / len(group) for group in part])
            head = d.tree_heads[slot][-1]
            pooled = np64(fs.stages[d.head_stages[slot]]).mean(axis=(2, 3))
            logits = pooled @ np64(head.weight).T + np64(head.bias)
            want += np_ce(logits, mapping[y.numpy()], weight)
        assert got == pytest.approx(want, rel=1e-5)
        terms = d.loss(batch)
    z_t = np64(d.teacher(x))
    assert float(terms["kd"].detach()) == pytest.approx(0.9 * np_kd(np64(fs.logits), z_t, 4.0), rel=1e-5)
    assert float(terms["tree"].detach()) == pytest.approx(0.1 * want, rel=1e-5)


def test_tdd_prepare_artifacts_and_reusable_partitions(ds16):
    d = build("tdd", ds16)
    assert bool(d.prepared) and len(d.tree_heads) == d.teacher.num_stages
    parts = d.partitions
    for p in parts:
        assert sorted(c for g in p for c in g) == list(range(8))
    art = d.artifacts()
    assert [e["class_ids"] for e in art["partitions"]] == parts
    assert art["partitions"][0]["superclasses"][0][0] in ds16.class_names
    assert teacher_partitions(d.teacher, ds16, "train", batch_size=7) == parts


# ----------------------------------------------------------------------------- cid
def test_cid_warmup_scaling():
    ds = type("D", (), {"num_classes": 8, "image_size": 16})
    for epochs, want in ((240, 20), (2, 1), (30, 3), (12, 1), (36, 3)):
        assert build("cid", ds, epochs=epochs, prepare=False).warmup == want


def test_cid_terms_prototypes_and_intervention(ds16):
    d = build("cid", ds16, epochs=2)  # warm-up: 1 epoch
    batch = first_batch(ds16)
    x, y = batch["image"], batch["label"]
    T = 4.0
    d.train()
    d.on_epoch_start(0)
    terms = d.loss(batch)
    assert float(terms["ce"].detach()) == 0.0 and not bool(d.prototypes_ready)
    assert torch.equal(d.predict(x), d.student(x))  # before prototypes: the student's logits
    with torch.no_grad():
        fs = d.student.forward_features(x)  # train mode again: the same batch statistics
        ft = d.teacher.forward_features(x)
    f, ft_emb, zt, yn = np64(fs.embedding), np64(ft.embedding), np64(ft.logits), y.numpy()
    # the warm-up terms
    proj = f @ np64(d.regressor.weight).T + np64(d.regressor.bias)
    sample = np.mean(((proj - ft_emb) ** 2).sum(1) / (ft_emb ** 2).sum(1))
    assert float(terms["sample"].detach()) == pytest.approx(10 * sample, rel=1e-5)

    def gram(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T

    per_class = [np.sum((gram(ft_emb[yn == k]) - gram(f[yn == k])) ** 2) / (yn == k).sum() ** 2
                 for k in range(8) if (yn == k).sum() >= 2]
    assert float(terms["class"].detach()) == pytest.approx(np.mean(per_class), rel=1e-4)
    assert float(terms["kd"].detach()) == pytest.approx(np_kd(np64(fs.logits), zt, T), rel=1e-5)
    # prototypes: p_t[y]-weighted means of the detached embeddings, built at the warm-up's end
    # (an absent class gets zeros, as the reference's context_new); used from the next epoch on
    d.on_epoch_end(0)
    assert bool(d.next_ready) and not bool(d.prototypes_ready)
    assert torch.equal(d.predict(x), d.student(x))  # the warm-up's validation: still the plain student
    w = np_softmax(zt / T)[np.arange(len(yn)), yn]
    for k in range(8):
        sel = yn == k
        want = (w[sel, None] * f[sel]).sum(0) / w[sel].sum() if sel.any() else np.zeros(f.shape[1])
        np.testing.assert_allclose(np64(d.next_prototypes[k]), want, rtol=1e-5, atol=1e-6)
    assert d.next_prototypes.grad_fn is None and not d.next_prototypes.requires_grad
    assert float(d.proto_weight.sum()) == 0.0  # accumulators reset
    # after the warm-up: CE on the intervention head's output
    d.on_epoch_start(1)
    assert bool(d.prototypes_ready) and not bool(d.next_ready)
    d.eval()
    with torch.no_grad():
        terms = d.loss(batch)
        fs = d.student.forward_features(x)
        pred = d.predict(x)
    f, zs = np64(fs.embedding), np64(fs.logits)
    ctx = np_softmax(zs / T) @ np64(d.prototypes)
    y_hat = np.concatenate([f, ctx], 1) @ np64(d.intervention.weight).T + np64(d.intervention.bias)
    np.testing.assert_allclose(np64(pred), y_hat, rtol=1e-5, atol=1e-5)
    assert float(terms["ce"].detach()) == pytest.approx(np_ce(y_hat, yn), rel=1e-5)
    groups = d.param_groups(5e-4)
    reg = {id(p) for p in d.regressor.parameters()}
    assert [g["weight_decay"] for g in groups if {id(p) for p in g["params"]} == reg] == [0.0]
    assert all(g["weight_decay"] == 5e-4 for g in groups if not reg & {id(p) for p in g["params"]})


def test_cid_deployed_prototypes_are_the_ones_trained_with(ds16):
    """The trainer's order (epoch start, steps, epoch end, then validation/test/save): what
    ``predict`` and the saved state use after epoch e are the prototypes epoch e trained
    with (the reference's ``context_old``), never the ones just built from epoch e."""
    d = build("cid", ds16, epochs=3)  # warm-up: 1 epoch
    opt = torch.optim.SGD(d.param_groups(0.0), lr=0.05)
    batches = list(make_loader(ds16, "train", 16, train=True, seed=0))[:2]
    used = []
    real = d.intervene

    def spy(embedding, logits):
        used.append(d.prototypes.clone())
        return real(embedding, logits)

    d.intervene = spy
    for epoch in range(3):
        d.train()
        d.on_epoch_start(epoch)
        used.clear()
        for b in batches:
            terms = d.loss(b)
            opt.zero_grad()
            sum(terms.values()).backward()
            opt.step()
        trained_with = used[0] if used else None
        assert all(torch.equal(u, trained_with) for u in used)
        d.on_epoch_end(epoch)
        d.eval()
        used.clear()
        with torch.no_grad():
            d.predict(batches[0]["image"])
        if epoch == 0:  # the warm-up trained no head: the plain student is deployed
            assert trained_with is None and used == []
            continue
        assert len(used) == 1 and torch.equal(used[0], trained_with)
        assert not torch.equal(d.next_prototypes, trained_with)  # the new ones wait for the next epoch
        state = d.trainable_state()
        assert torch.equal(state["prototypes"], trained_with)
        # a resumed run (fresh distiller + this state) trains the next epoch with the new ones
        d2 = build("cid", ds16, epochs=3, seed=1, prepare=False)
        d2.load_trainable_state(state)
        d2.on_epoch_start(epoch + 1)
        assert torch.equal(d2.prototypes, d.next_prototypes)


def test_cid_absent_class_gets_zero_prototype(ds16):
    d = build("cid", ds16, epochs=2)
    d.train()
    batch = first_batch(ds16)
    keep = batch["label"] != batch["label"][0]
    absent = int(batch["label"][0])
    d.prototypes.fill_(3.0)  # an old prototype is not carried over (reference: cu = 0)
    d.on_epoch_start(0)
    d.loss({k: v[keep] for k, v in batch.items()})
    d.on_epoch_end(0)
    assert torch.equal(d.next_prototypes[absent], torch.zeros_like(d.next_prototypes[absent]))
    present = int(batch["label"][keep][0])
    assert d.next_prototypes[present].abs().sum() > 0


# ----------------------------------------------------------------------------- fcfd
def test_fcfd_ramp_and_paths(ds16):
    d = build("fcfd", ds16, epochs=24, prepare=False)  # ramp 20 -> 2 epochs
    for epoch, r in ((0, 0.5), (1, 1.0), (5, 1.0)):
        d.on_epoch_start(epoch)
        assert d.ramp() == r
    assert d.candidates == [("s2t", 0), ("t2s", 0), ("s2t", 1), ("t2s", 1)]
    torch.manual_seed(3)
    paths = d.draw_paths()
    assert len(paths) == 2 and len(set(paths)) == 2
    torch.manual_seed(3)
    assert d.draw_paths() == paths  # the global torch RNG: reproducible on resume
    assert len(d.s2t) == len(d.t2s) == 3


def test_fcfd_terms_match_manual_computation(ds16, monkeypatch):
    d = build("fcfd", ds16, prepare=False)
    monkeypatch.setattr(d, "draw_paths", lambda: [("s2t", 0), ("t2s", 1)])
    d.eval()
    batch = first_batch(ds16)
    x, y = batch["image"], batch["label"]
    with torch.no_grad():
        terms = d.loss(batch)
        fs, ft = d.student.forward_features(x), d.teacher.forward_features(x)
        t, s = d.teacher, d.student
        phi = lambda a: F.relu(a).mean(dim=(2, 3))  # noqa: E731
        mse = lambda a, b: float(((np64(a) - np64(b)) ** 2).mean())  # noqa: E731
        app = sum(mse(d.s2t[k](fs.stages[k]), ft.stages[k]) for k in range(3))
        app += mse(phi(d.s2t[2](fs.stages[2])), phi(ft.stages[2]))
        h1 = t.stages[1](d.s2t[0](fs.stages[0]))
        h2 = t.stages[2](h1)
        path_mse = mse(h1, ft.stages[1]) + mse(h2, ft.stages[2]) + mse(phi(h2), phi(ft.stages[2]))
        z_h = t.head(h2)
        z_g = s.head(s.stages[2](d.t2s[1](ft.stages[1])))
    zt = np64(ft.logits)
    r = 1 / 20  # epoch 0 of 240, ramp 20
    assert float(terms["ce"].detach()) == pytest.approx(np_ce(np64(fs.logits), y.numpy()), rel=1e-5)
    assert float(terms["kd"].detach()) == pytest.approx(np_kd(np64(fs.logits), zt, 4), rel=1e-5)
    path_kd = np_kd(np64(z_h), zt, 4) + np_kd(np64(z_g), zt, 4)
    assert float(terms["path_kd"].detach()) == pytest.approx(path_kd, rel=1e-5)
    assert float(terms["appearance"].detach()) == pytest.approx(5 * r * app, rel=1e-5)
    assert float(terms["path_feature"].detach()) == pytest.approx(5 * r * path_mse, rel=1e-5)


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_fcfd_mixed_paths_leave_student_bn_stats_alone(ds16, monkeypatch):
    d = build("fcfd", ds16, prepare=False)
    d.train()
    plain = copy.deepcopy(d)
    batch = first_batch(ds16)
    monkeypatch.setattr(d, "draw_paths", lambda: [("t2s", 0), ("t2s", 1)])
    d.loss(batch)
    with torch.no_grad():
        plain.student.forward_features(batch["image"])  # what the plain forward alone does
    before = _bn_state(plain.student)
    after = _bn_state(d.student)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the check is sensitive: an unguarded mixed forward does change them
    with torch.no_grad():
        g = plain.t2s[0](plain.teacher.forward_features(batch["image"]).stages[0])
        plain.student.forward_from(0, g)
    changed = _bn_state(plain.student)
    assert not all(torch.equal(changed[k], after[k]) for k in after)
    # the context manager restores the flag and leaves eval-mode layers alone
    with frozen_bn_stats(d.student):
        assert not any(m.track_running_stats for m in d.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(m.track_running_stats for m in d.student.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_fcfd_path_gradients(ds16):
    d = build("fcfd", ds16, prepare=False)
    d.train()
    x = first_batch(ds16)["image"]
    fs = d.student.forward_features(x)
    with torch.no_grad():
        ft = d.teacher.forward_features(x)
    bridged = [b(f) for b, f in zip(d.s2t, fs.stages)]
    kd_p, mse_p = d.path_terms(("s2t", 0), bridged, ft.stages, ft.logits)
    (kd_p + mse_p).backward()
    assert d.s2t[0][0].weight.grad.abs().sum() > 0  # through the frozen teacher's stages 1, 2 and head
    assert next(d.student.stages[0].parameters()).grad.abs().sum() > 0
    assert d.s2t[1][0].weight.grad is None
    assert all(p.grad is None for p in d.teacher.parameters())
    d.zero_grad(set_to_none=True)
    kd_p, _ = d.path_terms(("t2s", 1), bridged, ft.stages, ft.logits)
    kd_p.backward()
    assert d.t2s[1][0].weight.grad.abs().sum() > 0
    assert next(d.student.stages[2].parameters()).grad.abs().sum() > 0
    assert all(p.grad is None for p in d.student.stages[1].parameters())


def test_fcfd_incompatible_pairs_fail_at_construction(ds32):
    with pytest.raises(KDBenchError, match="same number of stages"):
        build("fcfd", ds32, teacher="timm:resnet18", student="resnet8", prepare=False)
    with pytest.raises(KDBenchError, match="2× apart"):
        build("fcfd", ds32, teacher="vgg8", student="timm:mobilenetv3_small_050", prepare=False)


def _train_steps(d, ds, steps=3, lr=0.05):
    opt = torch.optim.SGD(d.param_groups(5e-4), lr=lr, momentum=0.9)
    d.train()
    d.on_epoch_start(0)
    for b in list(make_loader(ds, "train", 16, train=True, seed=0))[:steps]:
        terms = d.loss(b)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
    return terms


def test_fcfd_train_mode_teacher_uses_batch_stats_on_a_private_copy(ds16):
    torch.manual_seed(0)
    teacher = create_model(TEACHER, ds16.num_classes)
    teacher.eval()
    x = first_batch(ds16, train=False)["image"]
    with torch.no_grad():
        teacher.stages[0][0].bn1.running_mean.add_(0.3)  # running stats that differ from batch stats
        before_out = teacher(x).clone()
    before_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = get_method("fcfd")(create_model(STUDENT, ds16.num_classes), teacher, ds16.num_classes,
                           method_hparams("fcfd", TEACHER, STUDENT), epochs=240, input_size=16)
    assert d.hparams["teacher_bn"] == "train" and d.teacher is not teacher
    d.train()
    assert d.teacher.training and not teacher.training and d.student.training
    batch = first_batch(ds16)
    torch.manual_seed(0)
    terms = d.loss(batch)
    # z_t of the kd term is the batch-statistics forward (as the reference's train-mode teacher)
    with torch.no_grad():
        z_s = d.student.forward_features(batch["image"]).logits
        z_train = copy.deepcopy(teacher).train()(batch["image"])
        z_eval = teacher(batch["image"])
    assert float(terms["kd"].detach()) == pytest.approx(np_kd(np64(z_s), np64(z_train), 4), rel=1e-5)
    assert abs(np_kd(np64(z_s), np64(z_eval), 4) - np_kd(np64(z_s), np64(z_train), 4)) > 1e-4
    _train_steps(d, ds16)
    # the caller's teacher: same state, same eval-mode outputs; the copy's stats drifted
    assert all(torch.equal(before_state[k], v) for k, v in teacher.state_dict().items())
    with torch.no_grad():
        assert torch.equal(teacher(x), before_out)
    assert not torch.equal(d.teacher.stages[0][0].bn1.running_mean, teacher.stages[0][0].bn1.running_mean)
    assert not any(k.startswith("teacher.") for k in d.trainable_state())
    # teacher_bn: eval keeps the teacher itself, in eval mode
    e = get_method("fcfd")(create_model(STUDENT, ds16.num_classes), teacher, ds16.num_classes,
                           {**method_hparams("fcfd", TEACHER, STUDENT), "teacher_bn": "eval"}, input_size=16)
    e.train()
    assert e.teacher is teacher and not teacher.training
    with pytest.raises(KDBenchError, match="teacher_bn"):
        get_method("fcfd")(create_model(STUDENT, 8), teacher, 8,
                           {**method_hparams("fcfd", TEACHER, STUDENT), "teacher_bn": "frozen"}, input_size=16)


def test_fcfd_job_leaves_saved_teacher_file_and_outputs_unchanged(tmp_path):
    """A whole fcfd job through the engine, default teacher_bn=train: the teacher's
    model.pt is byte-identical afterwards and the loaded teacher's eval outputs too."""
    import hashlib

    from kdbench.config import teacher_config
    from kdbench.hparams import student_config
    from kdbench.profile import validate_profile
    from kdbench.engine import model_io, trainer
    from tests.tiny import tiny_profile

    prof = validate_profile(tiny_profile(
        tmp_path, datasets={"shapes": {"image_size": 16, "n_train": 64, "n_val": 16, "n_test": 16,
                                       "n_test_ood": 16, "seed": 0}},
        teacher_train={"epochs": 1}, student_train={"epochs": 2, "milestones": [1]}))
    results = Path(prof["results_dir"])
    tdir = results / "teachers/shapes" / TEACHER / "s0"
    trainer.run(teacher_config(prof, "shapes", TEACHER, 0), tdir, results_dir=results)
    tpath = tdir / "model.pt"
    digest = hashlib.sha256(tpath.read_bytes()).hexdigest()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model_io.load_model(tpath)[0](x)
    cfg = student_config(prof, "shapes", TEACHER, STUDENT, "fcfd", 0)
    assert cfg.hparams["teacher_bn"] == "train"
    trainer.run(cfg, tmp_path / "fcfd", results_dir=results, teacher_path=tpath)
    assert hashlib.sha256(tpath.read_bytes()).hexdigest() == digest
    with torch.no_grad():
        assert torch.equal(model_io.load_model(tpath)[0](x), before)


def test_fcfd_bridges_follow_the_reference(ds32):
    """LeakyReLU(0.1) only into after-ReLU targets; bias on stride-2 / transposed convs only."""
    from kdbench.methods.adapters import after_relu_stages

    d = build("fcfd", ds32, prepare=False)  # resnet14 -> resnet8: post-ReLU, equal sizes
    for bridge in list(d.s2t) + list(d.t2s):
        assert isinstance(bridge[-1], torch.nn.LeakyReLU) and bridge[-1].negative_slope == 0.1
        assert bridge[0].bias is None and bridge[0].stride == (1, 1)
    mb = create_model("mobilenetv2", 8)
    assert after_relu_stages(mb, 32) == [False] * 4  # linear bottlenecks
    assert after_relu_stages(create_model("vgg8", 8), 32) == [True] * 4
    assert after_relu_stages(create_model("wrn_16_2", 8), 32) == [False, False, True]
    torch.manual_seed(0)
    v = get_method("fcfd")(mb, create_model("vgg8", 8), 8, method_hparams("fcfd", "vgg8", "mobilenetv2"),
                           input_size=32)
    # vgg8 stages 16/8/4/4 px, mobilenetv2 16/8/4/2 px: the last pair is 2x apart
    down, up = v.t2s[3], v.s2t[3]
    assert isinstance(down[0], torch.nn.Conv2d) and down[0].stride == (2, 2) and down[0].bias is not None
    assert isinstance(up[0], torch.nn.ConvTranspose2d) and up[0].bias is not None
    assert isinstance(up[-1], torch.nn.LeakyReLU)  # into vgg (after-ReLU)
    assert isinstance(down[-1], torch.nn.BatchNorm2d)  # into mobilenetv2 (linear)
    same = v.s2t[0]
    assert same[0].bias is None


def test_fcfd_check_pair_rejects_unequal_stage_counts():
    fcfd = get_method("fcfd")
    hp = method_hparams("fcfd", "vgg13", "shufflenetv2")
    with torch.device("meta"):
        vgg, shuffle, r14, r8 = (create_model(a, 100) for a in ("vgg13", "shufflenetv2", "resnet14", "resnet8"))
    with pytest.raises(PairError, match=r"vgg13->shufflenetv2.*teacher has 4, the student 3"):
        fcfd.check_pair(vgg, shuffle, hp)
    with pytest.raises(PairError, match="resnet14->vgg8"):
        with torch.device("meta"):
            fcfd.check_pair(r14, create_model("vgg8", 100), hp)
    fcfd.check_pair(r14, r8, hp)  # equal counts: accepted
    with torch.device("meta"):
        fcfd.check_pair(create_model("vgg13", 100), create_model("mobilenetv2", 100), hp)  # 4 and 4


# ----------------------------------------------------------------------------- e2kd
def _np_cam(model, feats, classes, size):
    """Grad-CAM by hand for a GAP -> fc head: α_k = W[c, k] / (h·w)."""
    a = np64(feats.stages[-1])
    w = np64(model.head.fc.weight)[classes]  # B×C
    cam = np.maximum((w[:, :, None, None] / (a.shape[2] * a.shape[3]) * a).sum(1), 0)
    return F.interpolate(torch.from_numpy(cam)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _np_cos(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 0.0)


def test_e2kd_explanation_term_matches_hand_gradcam(ds16):
    d = build("e2kd", ds16, prepare=False)
    d.eval()
    batch = first_batch(ds16)
    x = batch["image"]
    terms = d.loss(batch)
    with torch.no_grad():
        fs, ft = d.student.forward_features(x), d.teacher.forward_features(x)
    cls = np64(ft.logits).argmax(1)
    cam_s = _np_cam(d.student, fs, cls, (16, 16))
    cam_t = _np_cam(d.teacher, ft, cls, (16, 16))
    assert (cam_t.reshape(len(cls), -1).max(1) > 0).any()
    want = float(np.mean(1 - _np_cos(cam_s, cam_t)))
    assert float(terms["explanation"].detach()) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert set(terms) == {"ce", "kd", "explanation"}
    # the student's map keeps its graph: L_exp alone trains the fc weights through Grad-CAM
    assert terms["explanation"].grad_fn is not None
    d.zero_grad(set_to_none=True)
    terms["explanation"].backward()
    assert d.student.head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())


def test_e2kd_paper_form_and_kdmatched_ablation(ds16):
    """e2kd: τ²·KL + λ·L_exp with no CE (the paper); e2kd_kdmatched: kd's weights, same L_exp."""
    batch = first_batch(ds16)
    x, y = batch["image"], batch["label"]
    d = build("e2kd", ds16, prepare=False)
    d.eval()
    terms = d.loss(batch)
    with torch.no_grad():
        zs, zt = np64(d.student(x)), np64(d.teacher(x))
    assert float(terms["ce"].detach()) == 0.0
    T = d.hparams["temperature"]
    assert float(terms["kd"].detach()) == pytest.approx(np_kd(zs, zt, T), rel=1e-5)
    m = build("e2kd_kdmatched", ds16, prepare=False)  # the same seed: the same student and teacher
    m.eval()
    mterms = m.loss(batch)
    assert float(mterms["ce"].detach()) == pytest.approx(0.1 * np_ce(zs, y.numpy()), rel=1e-5)
    assert float(mterms["kd"].detach()) == pytest.approx(0.9 * np_kd(zs, zt, 4.0), rel=1e-5)
    assert float(mterms["explanation"].detach()) == pytest.approx(float(terms["explanation"].detach()), rel=1e-6)


def test_e2kd_frozen_never_runs_teacher_and_maps_follow_crop_flip(ds16):
    d = build("e2kd_frozen", ds16)
    n = len(ds16.splits["train"])
    assert d.stored_cams.shape == (n, 16, 16) and d.stored_cams.dtype == torch.float16
    assert d.stored_logits.shape == (n, 8)
    # the stored maps are the teacher's on the un-augmented images (max-normalised)
    from kdbench.methods.e2kd import teacher_gradcam

    plain = next(iter(make_loader(ds16, "train", n, train=False)))
    z, cam = teacher_gradcam(d.teacher, plain["image"], size=(16, 16))
    peak = cam.flatten(1).amax(1).clamp_min(1e-30)[:, None, None]
    ref = (cam / peak).half()
    assert torch.equal(d.stored_cams, ref) and torch.allclose(d.stored_logits, z)
    # alignment: a coordinate map rides along and tells where every pixel came from
    coord = (torch.arange(16 * 16, dtype=torch.float32) + 1).view(1, 16, 16).expand(n, 16, 16).contiguous()
    loader = make_loader(ds16, "train", 16, train=True, seed=1, aligned={**d.aligned_tensors(), "coord": coord})
    batch = next(iter(loader))
    assert ds16.augment.get("crop_pad", 0) > 0 and ds16.augment.get("flip")
    src = batch["coord"].long() - 1  # -1: padding
    flat = ref[batch["index"]].flatten(1).float()
    want = torch.where(src >= 0, flat.gather(1, src.clamp_min(0).flatten(1)).view_as(src), torch.zeros(()))
    assert torch.equal(batch["teacher_cam"].float(), want)
    assert (src.flatten(1)[:, 1] < src.flatten(1)[:, 0]).any()  # some image was flipped
    # training never touches the teacher
    def boom(*a, **k):
        raise AssertionError("teacher ran")

    for m in d.teacher.modules():
        m.register_forward_pre_hook(boom)
    d.train()
    opt = torch.optim.SGD(d.param_groups(0.0), lr=0.01)
    for b, _ in zip(make_loader(ds16, "train", 16, train=True, aligned=d.aligned_tensors()), range(2)):
        terms = d.loss(b)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        assert terms["explanation"].grad_fn is not None
    with pytest.raises(KDBenchError, match="teacher_cam"):
        d.loss({k: v for k, v in b.items() if k != "teacher_cam"})


# ----------------------------------------------------------------------------- all methods
# (teacher, student, data, lr): an untrained timm teacher's embedding is tiny, so CID's relative
# sample loss starts in the hundreds: a smaller step keeps the few steps stable
PAIRS = {"cifar": (TEACHER, STUDENT, "ds16", 0.05), "timm": ("timm:resnet18", STUDENT, "ds32", 0.01),
         "timm2": ("timm:resnet18", "timm:mobilenetv3_small_050", "ds32", 0.01)}
CASES = [(m, "cifar") for m in SEED_METHODS] + [(m, "timm") for m in ("tdd", "cid", "e2kd", "e2kd_frozen")] \
    + [("fcfd", "timm2")]


@pytest.mark.parametrize("method,pair", CASES)
def test_distills_finite_decreasing_teacher_frozen(method, pair, request):
    teacher, student, ds_name, lr = PAIRS[pair]
    ds = request.getfixturevalue(ds_name)
    d = build(method, ds, teacher=teacher, student=student, epochs=2)
    batch = first_batch(ds, d)
    opt = torch.optim.SGD(d.param_groups(5e-4), lr=lr, momentum=0.9)
    d.train()
    d.on_epoch_start(0)
    if method == "cid":  # one warm-up epoch of one step, then train with the intervention
        d.loss(batch)
        d.on_epoch_end(0)
        d.on_epoch_start(1)
    totals = []
    for _ in range(15):
        torch.manual_seed(0)  # fcfd: the same switch paths every step
        terms = d.loss(batch)
        total = sum(terms.values())
        assert all(bool(torch.isfinite(v)) for v in terms.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-3:]) < 0.9 * np.mean(totals[:3]), totals
    assert all(p.grad is None for p in d.teacher.parameters())
    # fcfd's default runs its private teacher copy in train mode (its reference); the others: eval
    assert d.teacher.training == (method == "fcfd" and d.hparams["teacher_bn"] == "train")


@pytest.mark.parametrize("method", SEED_METHODS)
def test_trainable_state_round_trip(method, ds16):
    d1 = build(method, ds16, epochs=2)
    batch = first_batch(ds16, d1)
    opt = torch.optim.SGD(d1.param_groups(0.0), lr=0.05)
    d1.train()
    for epoch in range(2):  # cid: prototypes exist after the first epoch
        d1.on_epoch_start(epoch)
        terms = d1.loss(batch)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        d1.on_epoch_end(epoch)
    state = d1.trainable_state()
    assert not any(k.startswith("teacher.") for k in state)
    # a fresh distiller (another init); tdd needs no prepare: the partitions are in the state
    d2 = build(method, ds16, epochs=2, seed=1, prepare=False)
    d2.teacher.load_state_dict(d1.teacher.state_dict())  # the same teacher, as in a resumed run
    d2.load_trainable_state(state)
    if method == "e2kd_frozen":  # its stored maps are not state: prepare re-derives them
        d2.prepare(make_ctx(ds16))
    if method == "tdd":
        def no_loader(*a, **k):
            raise AssertionError("prepare re-ran")

        ctx = make_ctx(ds16)
        ctx.make_loader = no_loader
        d2.prepare(ctx)  # already prepared: does nothing
        assert d2.partitions == d1.partitions and d2.artifacts() == d1.artifacts()
        assert "purity" in d2.artifacts()["partitions"][0]
    if method == "cid":
        assert torch.equal(d2.prototypes, d1.prototypes) and bool(d2.prototypes_ready)
    for d in (d1, d2):
        d.eval()
        d.on_epoch_start(1)
    torch.manual_seed(0)
    l1 = d1.loss(batch)  # with grad: e2kd's Grad-CAM differentiates
    torch.manual_seed(0)
    l2 = d2.loss(batch)
    with torch.no_grad():
        p1, p2 = d1.predict(batch["image"]), d2.predict(batch["image"])
    assert l1.keys() == l2.keys()
    for k in l1:
        assert torch.allclose(l1[k], l2[k], rtol=1e-6, atol=1e-7), k
    assert torch.allclose(p1, p2, rtol=1e-6, atol=1e-6)
    if method == "cid":  # the deployed model differs from the plain student
        assert not torch.allclose(p1, d1.student(batch["image"]))
    assert math.isfinite(float(sum(l1.values()).detach()))
