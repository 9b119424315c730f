"""Evaluation: constructed cases with known answers (agreement, Grad-CAM similarity, EPG,
FSS, RS, UniCAM, decision consistency, hierarchy ARI, FLOPs, claims), then
``evaluate_run`` and ``kdbench evaluate`` end to end on tiny trained models."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.evaluation import efficiency, explanations, hierarchy, similarity
from kdbench.errors import KDBenchError
from kdbench.evaluation import accuracy as acc
from kdbench.explain import gradcam_maps, unicam_map, unicam_maps
from kdbench.models import create_model


def _model(arch="resnet8", k=8, seed=0):
    torch.manual_seed(seed)
    return create_model(arch, k).eval()


# ----------------------------------------------------------------- identical models
def test_identical_models_agree_explain_and_match_features():
    m = _model()
    torch.manual_seed(1)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        f = m.forward_features(x)
    cls = f.logits.argmax(1)
    cam_a, logits = gradcam_maps(m, x)  # default class: own top-1
    cam_b, _ = gradcam_maps(m, last_stage=f.stages[-1], classes=cls, size=(16, 16))
    assert cam_a.shape == (16, 16, 16)
    assert torch.allclose(logits, f.logits, atol=1e-5)
    torch.testing.assert_close(cam_a, cam_b)
    assert acc.agreement(cls, logits.argmax(1)) == 1.0
    nonzero = cam_a.flatten(1).amax(1) > 0
    assert nonzero.any()
    assert explanations.expl_sim(cam_a[nonzero], cam_b[nonzero]) == pytest.approx(1.0, abs=1e-6)
    fss = similarity.fss_stages(f.stages, f.stages)
    assert len(fss) == m.num_stages
    assert fss == pytest.approx([1.0] * m.num_stages, abs=1e-9)


def test_gradcam_works_for_a_frozen_teacher():
    """A frozen model (no parameter requires grad) gets the maps of the same model unfrozen."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    frozen, free = _model(), _model()
    frozen.requires_grad_(False)
    cams, logits = gradcam_maps(frozen, x, classes=[0, 1, 2, 3])
    want, want_logits = gradcam_maps(free, x, classes=[0, 1, 2, 3])
    assert cams.shape == (4, 16, 16) and int((cams.flatten(1).amax(1) > 0).sum()) >= 3  # maps, not zeros
    assert torch.allclose(cams, want, rtol=1e-6, atol=1e-8) and torch.allclose(logits, want_logits, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in free.parameters())  # the maps leave no gradients behind


def test_fss_pairs_stages_at_the_same_relative_depth():
    torch.manual_seed(0)
    t = [torch.randn(32, 4, 2, 2) for _ in range(6)]
    s = [t[1].clone(), t[3].clone(), t[5].clone()]  # stage_pairs(3, 6) = (0,1), (1,3), (2,5)
    assert similarity.fss_stages(s, t) == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)


# ----------------------------------------------------------------- EPG
def test_epg_is_one_inside_the_mask_and_null_without_masks():
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    cam = torch.rand(3, 8, 8) * mask
    assert explanations.epg(cam, mask) == pytest.approx(1.0)
    assert explanations.epg(torch.rand(3, 8, 8) * ~mask, mask) == pytest.approx(0.0)
    assert explanations.epg(cam, None) is None


# ----------------------------------------------------------------- RS
def test_rs_is_near_zero_for_random_labels_and_high_for_label_features():
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.randn(n, 20, generator=g, dtype=torch.float64)
    y = torch.randn(n, 20, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n,), generator=g)
    assert abs(similarity.relevance(x, y, labels, 4)) < 0.05
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    informative = torch.cat([x[:, :2] * 0.1, onehot], 1)
    assert similarity.relevance(informative, y, labels, 4) > 0.5
    # what the base already has is removed: x against itself leaves nothing
    assert abs(similarity.relevance(informative, informative, labels, 4)) < 1e-6


# ----------------------------------------------------------------- FSS estimators
def _np_dist(x):
    x = x.reshape(len(x), -1)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _np_ucentre(x):
    a, n = _np_dist(x), len(x)
    big = a - a.sum(1, keepdims=True) / (n - 2) - a.sum(0, keepdims=True) / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(big, 0.0)
    return big


def _np_uinner(a, b):
    n = len(a)
    return (a * b).sum() / (n * (n - 3))  # diagonals are 0


def _np_ucorr(a, b):
    return _np_uinner(a, b) / np.sqrt(_np_uinner(a, a) * _np_uinner(b, b))


def _np_u_dcor(x, y):
    return _np_ucorr(_np_ucentre(x), _np_ucentre(y))


def _np_v_dcor_normalized(x, y):
    """gadhane/UniCAM pdCor.Distance_Correlation, written from its formula."""
    def centred(z):
        z = z.reshape(len(z), -1)
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        a = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1) + 1e-12)
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()

    a, b = centred(x), centred(y)
    return (a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean() + 1e-9)


def _np_rs(x, y, onehot):
    a, b, l = _np_ucentre(x), _np_ucentre(y), _np_ucentre(onehot)
    ar = a - _np_uinner(a, b) / _np_uinner(b, b) * b
    return _np_ucorr(ar, l)


def test_fss_estimators_match_independent_numpy():
    rng = np.random.default_rng(0)
    n = 23  # 4 batches of 5 and a dropped one of 3
    x = rng.normal(size=(n, 3, 2, 2))
    y = np.concatenate([x.reshape(n, -1)[:, :5] ** 2, rng.normal(size=(n, 4))], 1)
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert similarity.fss(tx, ty, "u_centered") == pytest.approx(_np_u_dcor(x, y), rel=1e-10)
    assert similarity.fss(tx, ty, "v_normalized") == pytest.approx(_np_v_dcor_normalized(x, y), rel=1e-10)
    batch5 = np.mean([_np_u_dcor(x[s:s + 5], y[s:s + 5]) for s in range(0, 20, 5)])
    assert similarity.fss(tx, ty, "u_centered_batch5") == pytest.approx(batch5, rel=1e-10)
    assert len({round(similarity.fss(tx, ty, e), 6) for e in similarity.FSS_ESTIMATORS}) == 3
    labels = rng.integers(0, 3, n)
    onehot = np.eye(3)[labels]
    tl = torch.tensor(labels)
    assert similarity.relevance(tx, ty, tl, 3) == pytest.approx(_np_rs(x.reshape(n, -1), y, onehot), rel=1e-9)
    assert similarity.relevance(tx, ty, tl, 3, "v_normalized") == similarity.relevance(tx, ty, tl, 3)
    rs5 = np.mean([_np_rs(x.reshape(n, -1)[s:s + 5], y[s:s + 5], onehot[s:s + 5]) for s in range(0, 20, 5)])
    assert similarity.relevance(tx, ty, tl, 3, "u_centered_batch5") == pytest.approx(rs5, rel=1e-9)
    with pytest.raises(KDBenchError, match="fss_estimator.*u_centered"):
        similarity.fss(tx, ty, "biased")


def test_fss_estimators_on_independent_high_dim_features():
    """Independent 1024-d features, n = 256: the reference's V-statistic on normalised rows
    is ≈ 0.94, the U-centred estimator ≈ 0 (it is unbiased)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1024, generator=g, dtype=torch.float64)
    y = torch.randn(256, 1024, generator=g, dtype=torch.float64)
    assert similarity.fss(x, y, "v_normalized") == pytest.approx(0.94, abs=0.01)
    assert abs(similarity.fss(x, y, "u_centered")) < 0.01


def test_rs_stages_pair_the_same_stage():
    torch.manual_seed(0)
    s = [torch.randn(16, 4, 2, 2) for _ in range(3)]
    b = [torch.randn(16, 4, 2, 2) for _ in range(3)]
    labels = torch.arange(16) % 4
    rs, res = similarity.rs_stages(s, b, labels, 4)
    assert rs == [similarity.relevance(s[k], b[k], labels, 4) for k in range(3)]
    assert res == [similarity.relevance(b[k], s[k], labels, 4) for k in range(3)]


# ----------------------------------------------------------------- UniCAM
def test_unicam_maps_shape_finite_and_swap():
    torch.manual_seed(0)
    s = torch.randn(16, 8, 4, 4)
    b = torch.randn(16, 8, 4, 4)
    labels = torch.arange(16) % 4
    d, r = unicam_maps(s, b, labels, num_classes=4, size=(16, 16))
    assert d.shape == r.shape == (16, 16, 16)
    assert torch.isfinite(d).all() and torch.isfinite(r).all() and (d >= 0).all()
    assert d.abs().sum() > 0 and r.abs().sum() > 0
    torch.testing.assert_close(d, unicam_map(s, b, labels, num_classes=4, size=(16, 16)))
    torch.testing.assert_close(r, unicam_map(b, s, labels, num_classes=4, size=(16, 16)))
    d2, r2 = unicam_maps(b, s, labels, num_classes=4, size=(16, 16))
    torch.testing.assert_close(d2, r)
    torch.testing.assert_close(r2, d)
    assert not torch.allclose(d, r)
    # the maps explain exactly the reported rs / rs_residual
    *_, rs, rs_res = unicam_maps(s, b, labels, num_classes=4, return_scores=True)
    assert rs == pytest.approx(similarity.relevance(s, b, labels, 4), abs=1e-12)
    assert rs_res == pytest.approx(similarity.relevance(b, s, labels, 4), abs=1e-12)
    with pytest.raises(ValueError, match="at least 8"):
        unicam_map(s[:4], b[:4], labels[:4])


def test_unicam_reference_target_pooled_embedding_and_minmax():
    """The reference's default: RS of the pooled embeddings (feature_depth=1) explained on the
    last stage, each map min-max scaled (pytorch-grad-cam scale_cam_image)."""
    m_s, m_b = _model(seed=0), _model(seed=1)
    torch.manual_seed(2)
    x = torch.randn(16, 3, 16, 16)
    labels = torch.arange(16) % 4
    with torch.no_grad():
        a_s = m_s.forward_features(x).stages[-1]
        a_b = m_b.forward_features(x).stages[-1]
        e_s, e_b = m_s.head.embed(a_s), m_b.head.embed(a_b)
    d, r, score_d, score_r = unicam_maps(a_s, a_b, labels, num_classes=4, student_embed=m_s.head.embed,
                                         base_embed=m_b.head.embed, return_scores=True)
    assert score_d == pytest.approx(similarity.relevance(e_s, e_b, labels, 4), abs=1e-12)
    assert score_r == pytest.approx(similarity.relevance(e_b, e_s, labels, 4), abs=1e-12)
    # by hand: f = GAP(A) (the embedding), so ∂RS/∂A_k,ij = g_k / (h·w) and α_k = g_k / (h·w)
    from kdbench import functional as KF

    f = e_s.double().clone().requires_grad_(True)
    score = KF.relevance_score(f, e_b.double(), labels, num_classes=4)
    (g,) = torch.autograd.grad(score, f)
    hw = a_s.shape[-1] * a_s.shape[-2]
    alpha = np64(g) / hw
    cam = np.maximum((alpha[:, :, None, None] * np64(a_s)).sum(1), 0)
    cam = cam - cam.reshape(16, -1).min(1)[:, None, None]
    cam = cam / (cam.reshape(16, -1).max(1)[:, None, None] + 1e-7)
    np.testing.assert_allclose(np64(d), cam, rtol=1e-4, atol=1e-5)
    assert (d.flatten(1).amax(1) <= 1).all() and (d.flatten(1).amin(1) == 0).all()
    assert (d.flatten(1).amax(1) > 0.999).sum() >= 8
    raw = unicam_map(a_s, e_b, labels, num_classes=4, embed_x=m_s.head.embed, minmax=False)
    assert not torch.allclose(raw, d)


def np64(t):
    return t.detach().double().cpu().numpy()


# ----------------------------------------------------------------- decision process
def _separable(n, partitions, num_classes, seed):
    """Pooled 'stage features' whose stage-l block encodes the super-class π_l(y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    feats = []
    for part in partitions:
        g = hierarchy.class_to_group(part, num_classes)[y]
        centers = np.eye(len(part)) * 10.0
        feats.append(centers[g] + rng.normal(0, 0.5, (n, len(part))))
    return feats, y


def test_decision_consistency_one_on_separable_features_and_ari():
    # one partition per teacher stage (the last one's: the classes); the student's last
    # stage is not probed (its decision is the classification)
    truth = [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1], [2, 3], [4, 5], [6, 7]], [[k] for k in range(8)]]
    tr, ytr = _separable(400, truth, 8, 0)
    te, yte = _separable(200, truth, 8, 1)
    tr[-1], te[-1] = np.zeros_like(tr[-1]), np.zeros_like(te[-1])  # ignored: a constant last stage
    dc, per_stage = hierarchy.decision_consistency(tr, ytr, te, yte, truth, 8)
    assert dc == pytest.approx(1.0) and per_stage == pytest.approx([1.0, 1.0])
    # noise features predict the partition at chance, well below 1
    noise = [np.random.default_rng(2).normal(size=f.shape) for f in tr]
    low, _ = hierarchy.decision_consistency(noise, ytr, [np.random.default_rng(3).normal(size=f.shape) for f in te],
                                            yte, truth, 8)
    assert low < 0.75
    # a single-super-class stage carries no decision: skipped
    dc1, per1 = hierarchy.decision_consistency(tr, ytr, te, yte, [[list(range(8))], truth[1], truth[2]], 8)
    assert per1[0] is None and dc1 == pytest.approx(1.0)

    assert hierarchy.walk_partition_ari(truth, truth, 8) == pytest.approx(1.0)
    relabelled = [[[4, 5, 6, 7], [0, 1, 2, 3]], [[k] for k in range(8)]]
    assert hierarchy.walk_partition_ari(relabelled, truth, 8) == pytest.approx(1.0)
    assert hierarchy.walk_partition_ari([[[k] for k in range(8)]] * 2, truth, 8) == pytest.approx(0.0)
    assert hierarchy.walk_partition_ari(truth, None, 8) is None


def test_flops_of_a_linear_layer():
    lin = torch.nn.Linear(10, 4)
    assert efficiency.flops_per_image(lin, torch.randn(1, 10)) == 2 * 10 * 4
    assert efficiency.count_params(lin) == 44


# ----------------------------------------------------------------- claims
def _runs():
    import pandas as pd

    rows = []
    rng = np.random.default_rng(0)
    for seed in range(5):
        base = {"dataset": "shapes", "teacher": "resnet14", "student": "resnet8", "seed": seed}
        noise = rng.normal(0, 0.01, 8)
        rows.append({**base, "method": "kd", "top1": 0.70 + noise[0], "agreement": 0.80 + noise[1],
                     "decision_consistency": 0.6 + noise[2], "expl_sim": 0.5 + noise[6],
                     "unicam_epg_distilled": 0.6 + noise[3], "unicam_epg_residual": 0.4 + noise[4], "top1_ood": None})
        rows.append({**base, "method": "fcfd", "top1": 0.75 + noise[5], "agreement": 0.8, "decision_consistency": 0.6,
                     "expl_sim": 0.5, "unicam_epg_distilled": 0.5, "unicam_epg_residual": 0.5, "top1_ood": None})
        rows.append({**base, "method": "vanilla", "top1": 0.6, "agreement": 0.7, "decision_consistency": 0.5,
                     "expl_sim": 0.4, "unicam_epg_distilled": None, "unicam_epg_residual": None, "top1_ood": None})
    # e2kd on other seeds only: Welch
    for seed in range(10, 14):
        rows.append({"dataset": "shapes", "teacher": "resnet14", "student": "resnet8", "seed": seed, "method": "e2kd",
                     "top1": 0.7, "agreement": 0.9 + 0.01 * (seed % 3), "decision_consistency": 0.6,
                     "expl_sim": 0.45 + 0.01 * (seed % 2), "unicam_epg_distilled": 0.5, "unicam_epg_residual": 0.5,
                     "top1_ood": None})
    return pd.DataFrame(rows)


def test_claims_table_against_scipy_and_missing_rows():
    from scipy import stats

    from kdbench.board.claims import claims_table

    runs = _runs()
    table = claims_table(runs)
    for col in ["claim", "paper", "method", "baseline", "metric", "dataset", "teacher", "student", "n",
                "method_mean", "baseline_mean", "delta", "p_value", "holds"]:
        assert col in table.columns
    idx = table.set_index(["claim", "method"])

    kd = runs[runs.method == "kd"].sort_values("seed")
    fc = runs[runs.method == "fcfd"].sort_values("seed")
    row = idx.loc[("fcfd_top1", "fcfd")]
    assert row["n"] == 5 and row["test"] == "paired_t"
    assert row["delta"] == pytest.approx(fc.top1.mean() - kd.top1.mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(fc.top1.to_numpy(), kd.top1.to_numpy()).pvalue)
    assert row["holds"] is True

    e2 = runs[runs.method == "e2kd"]
    row = idx.loc[("e2kd_agreement", "e2kd")]
    assert row["test"] == "welch_t" and row["n_method"] == 4 and row["n_baseline"] == 5
    assert row["p_value"] == pytest.approx(stats.ttest_ind(e2.agreement, kd.agreement, equal_var=False).pvalue)
    assert row["holds"] is True
    row = idx.loc[("e2kd_expl_sim", "e2kd")]
    assert row["delta"] < 0 and row["holds"] is False  # reported honestly

    row = idx.loc[("unicam_epg", "kd")]
    assert row["metric"] == "unicam_epg_distilled" and row["baseline_metric"] == "unicam_epg_residual"
    assert row["test"] == "paired_t" and row["n"] == 5
    assert row["p_value"] == pytest.approx(stats.ttest_rel(kd.unicam_epg_distilled.to_numpy(dtype=float),
                                                            kd.unicam_epg_residual.to_numpy(dtype=float)).pvalue)
    assert row["holds"] is True
    assert ("unicam_epg", "fcfd") in idx.index and ("unicam_epg", "vanilla") not in idx.index

    for claim, method in [("tdd_decision", "tdd"), ("cid_ood", "cid")]:  # no tdd / cid runs; top1_ood all null
        row = idx.loc[(claim, method)]
        assert row["n"] == 0 and math.isnan(row["delta"]) and math.isnan(row["p_value"]) and row["holds"] is None

    empty = claims_table(runs.iloc[0:0])
    assert len(empty) == 6 and (empty["n"] == 0).all()


# ----------------------------------------------------------------- end to end
PROFILE = {
    "results_dir": "results",
    "datasets": {"shapes": {"image_size": 16, "n_train": 192, "n_val": 32, "n_test": 48, "n_test_ood": 32, "seed": 0}},
    "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0],
    "teacher_seed": 0,
    "teacher_train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "schedule": "cosine"},
    "student_train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "schedule": "cosine"},
    "evaluation": {"n_samples": 32, "probe_train_samples": 64, "figures": True, "figure_images": 3},
    "threads": 1,
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kdbench.config import run_paths, teacher_config
    from kdbench.hparams import student_config
    from kdbench.profile import validate_profile
    from kdbench.engine import trainer

    tmp = tmp_path_factory.mktemp("evaluation")
    prof = validate_profile({**PROFILE, "results_dir": str(tmp / "results")})
    results = Path(prof["results_dir"])
    tdir = run_paths(results, "teacher", "shapes", "resnet8", 0)
    trainer.run(teacher_config(prof, "shapes", "resnet8", 0), tdir, results_dir=results)
    dirs = {}
    for method in ("vanilla", "kd"):
        d = run_paths(results, "student", "shapes", "resnet8", 0, teacher="resnet8", method=method)
        trainer.run(student_config(prof, "shapes", "resnet8", "resnet8", method, 0), d, results_dir=results,
                    teacher_path=tdir / "model.pt")
        dirs[method] = d
    return tmp, prof, results, tdir, dirs


def _dataset(prof, results):
    from kdbench.data.cache import load_dataset

    return load_dataset("shapes", prof["datasets"]["shapes"], results)


def test_evaluate_run_end_to_end_deterministic(trained):
    from kdbench.evaluation.run import PARTITIONS_FILE, PREDICTIONS_FILE, RECORD_KEYS, evaluate_run

    tmp, prof, results, tdir, dirs = trained
    ds = _dataset(prof, results)
    ev = prof["evaluation"]
    recs, pngs = [], []
    for i in range(2):
        out, fig = tmp / f"kd{i}.json", tmp / f"kd{i}.png"
        recs.append(evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev, out_path=out,
                                 figure_path=fig, reuse=False))  # computed twice, not reused
        assert json.loads(out.read_text()) == recs[-1]
        pngs.append(fig.read_bytes())
    rec = recs[0]
    assert set(rec) == set(RECORD_KEYS)
    assert pngs[0] == pngs[1] and pngs[0][:8] == b"\x89PNG\r\n\x1a\n"
    a, b = ((tmp / f"kd{i}.json").read_text() for i in range(2))
    strip = lambda s: {k: v for k, v in json.loads(s).items() if k != "eval_s"}
    assert strip(a) == strip(b)
    assert (tdir / PARTITIONS_FILE).is_file() and (tdir / PREDICTIONS_FILE).is_file()

    metrics = json.loads((dirs["kd"] / "metrics.json").read_text())
    assert rec["top1"] == metrics["top1"] and rec["params"] == metrics["params"]
    assert (rec["dataset"], rec["teacher"], rec["student"], rec["method"], rec["seed"], rec["teacher_seed"]) == \
        ("shapes", "resnet8", "resnet8", "kd", 0, 0)
    assert rec["n_eval"] == 32 and len(rec["fss_stages"]) == 3
    assert rec["fss_estimator"] == "u_centered" and len(rec["rs_stages"]) == len(rec["rs_residual_stages"]) == 3
    assert rec["rs"] == rec["rs_stages"][-1] and rec["rs_residual"] == rec["rs_residual_stages"][-1]
    v = evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation={**ev, "fss_estimator": "v_normalized"})
    assert v["fss_estimator"] == "v_normalized" and v["fss"] != rec["fss"]
    assert v["rs"] == rec["rs"] and v["expl_sim"] == rec["expl_sim"]  # the reference's RS is U-centred
    with pytest.raises(KDBenchError, match="fss_estimator"):
        evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation={**ev, "fss_estimator": "nope"})
    for key in ("agreement", "agreement_ood", "expl_sim", "epg", "fss", "rs", "rs_residual",
                "unicam_epg_distilled", "unicam_epg_residual", "decision_consistency", "walk_partition_ari"):
        assert isinstance(rec[key], float) and math.isfinite(rec[key]), key
    assert 0 <= rec["agreement"] <= 1 and 0 <= rec["epg"] <= 1 and rec["flops"] > 0

    # the vanilla run: no base, so RS / UniCAM are null (not 0); the rest is computed
    van = evaluate_run(dirs["vanilla"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev, out_path=tmp / "v.json",
                       figure_path=tmp / "v.png")
    for key in ("rs", "rs_residual", "unicam_epg_distilled", "unicam_epg_residual"):
        assert van[key] is None and json.loads((tmp / "v.json").read_text())[key] is None
    assert van["teacher"] == "resnet8" and van["teacher_seed"] == 0
    assert isinstance(van["decision_consistency"], float) and isinstance(van["agreement"], float)
    assert (tmp / "v.png").is_file()

    # base run missing: RS / UniCAM null too
    nob = evaluate_run(dirs["kd"], tdir, tmp / "nowhere", dataset=ds, evaluation={**ev, "figures": False},
                       figure_path=tmp / "nofig.png")
    assert nob["rs"] is None and nob["unicam_epg_distilled"] is None and not (tmp / "nofig.png").exists()
    assert nob["expl_sim"] == rec["expl_sim"]

    # the cached partitions are reused (same key): plant the true hierarchy -> ARI 1
    blob = json.loads((tdir / PARTITIONS_FILE).read_text())
    (tdir / PARTITIONS_FILE).write_text(json.dumps({**blob, "partitions": ds.hierarchy}))  # one per stage
    planted = evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev)
    assert planted["walk_partition_ari"] == pytest.approx(1.0)
    (tdir / PARTITIONS_FILE).write_text(json.dumps({**blob, "key": {"stale": True}}))  # another key: recomputed
    assert evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev)["walk_partition_ari"] == \
        rec["walk_partition_ari"]
    assert json.loads((tdir / PARTITIONS_FILE).read_text()) == blob

    # a dataset without masks or hierarchy: EPG-type metrics and ARI null, the rest computed
    bare = dataclasses.replace(ds, hierarchy=None, splits={k: dataclasses.replace(v, masks=None)
                                                           for k, v in ds.splits.items()})
    # (reuse=False: a dataset object edited in place keeps its fingerprint)
    nm = evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=bare, evaluation=ev, reuse=False)
    for key in ("epg", "unicam_epg_distilled", "unicam_epg_residual", "walk_partition_ari"):
        assert nm[key] is None
    assert nm["rs"] == rec["rs"] and nm["expl_sim"] == rec["expl_sim"]


def test_cli_evaluate_writes_standard_paths(trained, capsys):
    import yaml

    from kdbench.cli import main

    tmp, prof, results, tdir, dirs = trained
    params = tmp / "eval.yaml"
    params.write_text(yaml.safe_dump({**PROFILE, "results_dir": str(results)}))
    assert main(["evaluate", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet8",
                 "--student", "resnet8", "--method", "kd", "--seed", "0", "--set", "evaluation.figure_images=2"]) == 0
    out = results / "evals/shapes/resnet8__resnet8/kd/s0.json"
    fig = results / "figures/shapes/resnet8__resnet8/kd/s0_unicam.png"
    rec = json.loads(out.read_text())
    assert fig.is_file() and rec["method"] == "kd" and rec["rs"] is not None
    # the same command again reuses the kept record; --no-reuse evaluates again
    args = ["evaluate", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet8", "--student",
            "resnet8", "--method", "kd", "--seed", "0", "--set", "evaluation.figure_images=2"]
    assert main(args) == 0 and json.loads(out.read_text()) == rec
    assert main(args + ["--no-reuse"]) == 0
    again = json.loads(out.read_text())
    assert again["eval_s"] != rec["eval_s"] and {**again, "eval_s": 0} == {**rec, "eval_s": 0}
    # the vanilla run finds its teacher through the profile's teacher_seed
    assert main(["evaluate", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet8",
                 "--student", "resnet8", "--method", "vanilla", "--seed", "0", "--out", str(tmp / "van.json"),
                 "--figures", str(tmp / "figs")]) == 0
    assert json.loads((tmp / "van.json").read_text())["rs"] is None and (tmp / "figs/s0_unicam.png").is_file()
    # a run that was never trained: a clear error, exit code 2
    capsys.readouterr()
    assert main(["evaluate", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet8",
                 "--student", "resnet8", "--method", "kd", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    missing = results / "students/shapes/resnet8__resnet8/kd/s7/metrics.json"
    assert err.startswith(f"kdbench: error: evaluate: {missing} not found: train this run first: kdbench distill "), err
    assert "--method kd --seed 7" in err and err.count("\n") == 1, err  # one line, the command that fixes it


# ----------------------------------------------------------------- torch probe / ARI vs sklearn
def _probe_problem(n, d, k, sep, seed):
    """Gaussian classes (spread ``sep``) with uneven feature scales and offsets, plus a
    constant feature (StandardScaler keeps its scale at 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(k, d))[y] * sep + rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, d) + rng.normal(size=d) * 5
    x[:, 0] = 3.0
    return x, y


@pytest.mark.parametrize("n,d,k,sep", [(300, 12, 2, 0.3), (300, 24, 5, 0.5), (300, 32, 8, 3.0),
                                       (200, 8, 2, 20.0), (96, 40, 4, 0.2)])
def test_probe_matches_sklearn_logistic_regression(n, d, k, sep):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _probe_problem(n + 200, d, k, sep, seed=n + d + k)
    xtr, ytr, xte, yte = x[:n], y[:n] + 3, x[n:], y[n:] + 3  # labels need not start at 0
    probe = hierarchy.fit_probe(xtr, ytr)
    scaler = StandardScaler().fit(xtr)
    sk = LogisticRegression(max_iter=2000).fit(scaler.transform(xtr), ytr)  # what evaluate used to run
    ours, theirs = probe.score(xte, yte), sk.score(scaler.transform(xte), yte)
    assert abs(ours - theirs) <= 1.0 / len(yte) + 1e-12
    assert hierarchy.probe_accuracy(xtr, ytr, xte, yte) == ours
    np.testing.assert_allclose(probe.mean.numpy(), scaler.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(probe.scale.numpy(), scaler.scale_, rtol=1e-12)
    # the same optimum as sklearn solved tightly (sklearn's default tol stops earlier)
    tight = LogisticRegression(max_iter=10000, tol=1e-10).fit(scaler.transform(xtr), ytr)
    assert probe.coef.shape == tight.coef_.shape
    np.testing.assert_allclose(probe.coef.numpy(), tight.coef_, atol=1e-4 * max(1.0, np.abs(tight.coef_).max()))
    np.testing.assert_allclose(probe.intercept.numpy(), tight.intercept_,
                               atol=1e-4 * max(1.0, np.abs(tight.intercept_).max()))
    np.testing.assert_array_equal(probe.predict(xte), tight.predict(scaler.transform(xte)))


def test_probe_is_deterministic_and_is_torch_lbfgs_step_for_step():
    x, y = _probe_problem(200, 10, 3, 0.5, seed=0)
    a, b = hierarchy.fit_probe(x, y), hierarchy.fit_probe(x, y)
    assert torch.equal(a.coef, b.coef) and torch.equal(a.intercept, b.intercept) and a.n_iter > 0
    # lbfgs_minimize is one torch.optim.LBFGS(strong_wolfe) step without the Optimizer object
    z = torch.as_tensor((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0))
    for k in (2, 3):
        fun, cols = hierarchy.probe_objective(z, torch.as_tensor(y % k), k)
        x0 = torch.zeros(cols * z.shape[1] + cols, dtype=torch.float64)
        ours, n_ours = hierarchy.lbfgs_minimize(fun, x0)
        ref, n_ref = hierarchy._lbfgs_with_optimizer(
            fun, x0, max_iter=hierarchy.PROBE_MAX_ITER, max_eval=None, tolerance_grad=hierarchy.PROBE_TOL_GRAD,
            tolerance_change=hierarchy.PROBE_TOL_CHANGE, history_size=hierarchy.PROBE_HISTORY)
        assert n_ours == n_ref and torch.equal(ours, ref)
    # the analytic gradient is the gradient of the objective
    fun, cols = hierarchy.probe_objective(z, torch.as_tensor(y), 3)
    theta = torch.randn(cols * z.shape[1] + cols, dtype=torch.float64, requires_grad=True)
    w, b0 = theta[: cols * z.shape[1]].view(cols, -1), theta[cols * z.shape[1]:]
    loss = torch.nn.functional.cross_entropy(z @ w.T + b0, torch.as_tensor(y), reduction="sum") + 0.5 * (w * w).sum()
    (g,) = torch.autograd.grad(loss, theta)
    value, grad = fun(theta.detach())
    assert value == pytest.approx(float(loss.detach()), rel=1e-12) and torch.allclose(grad, g, rtol=1e-10, atol=1e-10)


def test_adjusted_rand_index_equals_sklearn():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 300))
        a = rng.integers(0, rng.integers(1, 15), n)
        b = rng.integers(0, rng.integers(1, 15), n) if rng.random() < 0.7 else (a * 7 + 1) % 5
        assert hierarchy.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    for a, b in [([0, 0, 0, 0], [0, 1, 2, 3]), ([0, 0, 1, 1], [0, 1, 0, 1]), ([0, 1, 2], [0, 1, 2]),
                 ([1, 1, 1], [2, 2, 2]), ([0], [5]), ([], []), ([0, 0, 1, 1], ["x", "x", "y", "y"])]:
        assert hierarchy.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_evaluation_hot_path_imports_no_sklearn_scipy_or_dynamo():
    """The per-run evaluation must not pay for sklearn / scipy / torch._dynamo imports
    (torch.optim.Optimizer, TorchDispatchMode and use_deterministic_algorithms pull dynamo in)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, torch\n"
        "from kdbench.evaluation import hierarchy, efficiency\n"
        "from kdbench.engine.runtime import set_deterministic\n"
        "set_deterministic()\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "x = np.random.default_rng(0).normal(size=(64, 4)); y = (x[:, 0] > 0).astype(int)\n"
        "assert hierarchy.probe_accuracy(x, y, x, y) > 0.9\n"
        "assert hierarchy.walk_partition_ari([[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]], 4) == 1.0\n"
        "assert efficiency.flops_per_image(torch.nn.Linear(10, 4), torch.randn(1, 10)) == 80\n"
        "bad = [m for m in ('sklearn', 'scipy', 'torch._dynamo', 'torch._inductor') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_teacher_eval_features_cached_once_exactly(trained):
    """The teacher's pass over the evaluation subset is cached once per teacher run: a
    record made from the cache equals the recomputed one exactly, the cached tensors equal
    a fresh pass bit for bit, and a changed evaluation config (subset size) or a changed
    teacher file invalidates it."""
    from kdbench import io as kio
    from kdbench.engine.model_io import load_model
    from kdbench.evaluation import run as erun

    tmp, prof, results, tdir, dirs = trained
    ds = _dataset(prof, results)
    ev = {**prof["evaluation"], "figures": False}
    cache = tdir / erun.EVAL_FEATURES_FILE
    cache.unlink(missing_ok=True)
    strip = lambda r: {k: v for k, v in r.items() if k != "eval_s"}
    fresh = erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev, reuse=False)
    assert cache.is_file()
    blob = kio.load_torch(cache)  # weights_only=True
    key = erun.teacher_eval_key(tdir, ds, ev["n_samples"], erun.BATCH_SIZE, "cpu")
    assert blob["key"] == key

    # the cached tensors are a fresh pass of the teacher, bit for bit
    teacher, _ = load_model(tdir / "model.pt")
    again = erun.collect({"teacher": teacher}, ds, erun.eval_subset(ds, ev["n_samples"]), torch.device("cpu"))
    assert torch.equal(again["teacher"]["logits"], blob["logits"])
    assert all(torch.equal(a, b) for a, b in zip(again["teacher"]["stages"], blob["stages"]))

    # from the cache: the same record; the teacher's pass is not run again
    calls = []
    real = erun.collect

    def spy(models, *a, **k):
        calls.append(sorted(models))
        return real(models, *a, **k)

    erun.collect = spy
    try:
        cached = erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev, reuse=False)
        assert calls[0] == ["base", "student"] and not any("teacher" in c for c in calls)
        assert strip(cached) == strip(fresh)
        # another evaluation subset: a stale cache is recomputed (and rewritten)
        calls.clear()
        other = erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation={**ev, "n_samples": 16},
                                  reuse=False)
        assert calls[0] == ["base", "student", "teacher"] and other["n_eval"] == 16
        assert kio.load_torch(cache)["key"]["n_samples"] == 16
    finally:
        erun.collect = real
    # a corrupt cache file is recomputed, not an error
    cache.write_bytes(b"not a torch file")
    assert strip(erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev,
                                   reuse=False)) == strip(fresh)
    assert erun.load_teacher_eval(tdir, key) is not None
    # a retrained teacher (another model.pt) has another key
    assert erun.load_teacher_eval(tdir, {**key, "teacher_sha": "0" * 16}) is None


def test_record_reused_only_while_every_input_is_unchanged(trained, monkeypatch):
    """A student evaluated again with the same inputs gets its kept record (nothing is
    computed, the record file is written again); another model/metrics file, evaluation
    setting, tree file, code, a missing figure or a corrupt cache each mean a new evaluation."""
    from kdbench.evaluation import run as erun

    tmp, prof, results, tdir, dirs = trained
    ds = _dataset(prof, results)
    ev = prof["evaluation"]
    kept = dirs["kd"] / erun.RECORD_CACHE_FILE
    fig = tmp / "reuse.png"
    fresh = erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], dataset=ds, evaluation=ev, figure_path=fig,
                              reuse=False)
    assert json.loads(kept.read_text())["record"] == fresh
    calls = []
    real = erun.collect
    monkeypatch.setattr(erun, "collect", lambda *a, **k: calls.append(1) or real(*a, **k))

    def evaluate(**changes):
        calls.clear()
        kw = {"dataset": ds, "evaluation": ev, "figure_path": fig, "out_path": tmp / "reuse.json", **changes}
        rec = erun.evaluate_run(dirs["kd"], tdir, dirs["vanilla"], **kw)
        return rec, bool(calls)

    rec, computed = evaluate()
    assert not computed and rec == fresh and json.loads((tmp / "reuse.json").read_text()) == fresh
    fig.unlink()  # the figure is asked for and gone: evaluated again
    rec, computed = evaluate()
    assert computed and fig.is_file() and {**rec, "eval_s": 0} == {**fresh, "eval_s": 0}
    assert not evaluate()[1]
    assert evaluate(evaluation={**ev, "n_samples": 16})[0]["n_eval"] == 16  # another setting
    assert evaluate()[1]  # and back: the kept record is the n_samples=16 one, so again
    metrics = dirs["kd"] / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text + "\n")  # another metrics file (same content): evaluated again
    try:
        assert evaluate()[1] and not evaluate()[1]
    finally:
        metrics.write_text(text)
    assert evaluate()[1]
    tree = tdir / erun.PARTITIONS_FILE
    blob = json.loads(tree.read_text())
    tree.write_text(json.dumps({**blob, "partitions": ds.hierarchy}))  # an edited tree file
    rec, computed = evaluate()
    assert computed and rec["walk_partition_ari"] == pytest.approx(1.0)
    tree.write_text(json.dumps(blob))
    assert evaluate()[0]["walk_partition_ari"] == fresh["walk_partition_ari"]
    monkeypatch.setattr(erun, "_CODE_SHA", "0" * 16)  # other kdbench code
    assert evaluate()[1] and not evaluate()[1]
    kept.write_text("{not json")  # a corrupt kept record: evaluated again, no error
    rec, computed = evaluate()
    assert computed and {**rec, "eval_s": 0} == {**fresh, "eval_s": 0}
    blob = json.loads(kept.read_text())
    del blob["record"]["fss"]  # a record of another shape (an older kdbench): not reused
    kept.write_text(json.dumps(blob))
    assert evaluate()[1]


def test_a_new_method_file_changes_only_its_own_records_key(tmp_path):
    """The records' shared code key (package_fingerprint over a copy of the package) does
    not change when a method file is added to or edited in kdbench/methods/ (its records
    are keyed by their own ``method_source``); it changes when a shared module changes:
    methods/base.py, a method another module imports (kd under tdd), functional/, evaluation/."""
    import shutil

    from kdbench.evaluation import run as erun

    src = Path(erun.__file__).resolve().parents[1]
    root = tmp_path / "kdbench"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    before = erun.package_fingerprint(root)
    assert before == erun.code_fingerprint()  # the copy is the package
    mine = root / "methods" / "mine.py"
    mine.write_text("from kdbench.methods.base import Distiller, register_method\n\n\n"
                    "@register_method('mine')\nclass Mine(Distiller):\n    pass\n")
    assert mine in erun.method_own_files(root)
    assert erun.package_fingerprint(root) == before  # a new method: the others' records stay
    (root / "methods" / "ofd.py").write_text((src / "methods" / "ofd.py").read_text() + "# edited\n")
    assert erun.package_fingerprint(root) == before  # an edited method: its own method_source
    for shared in ("methods/base.py", "methods/kd.py", "methods/tdd.py", "functional/losses.py",
                   "evaluation/similarity.py"):
        path = root / shared
        text = path.read_text()
        path.write_text(text + "# edited\n")
        assert erun.package_fingerprint(root) != before, shared
        path.write_text(text)
    assert erun.package_fingerprint(root) == before


def test_distance_cache_gives_the_uncached_numbers_and_computes_each_matrix_once(monkeypatch):
    """fss_stages + rs_stages through one DistanceCache: the same floats as the direct
    functional calls, with one U-centred matrix per distinct tensor (3 student, 3 base, 3
    teacher stages, 1 label matrix) instead of one per use."""
    from kdbench import functional as KF
    from kdbench.evaluation import similarity

    g = torch.Generator().manual_seed(0)
    n = 24
    s = [torch.randn(n, 4, 3, 3, generator=g) for _ in range(3)]
    b = [x + 0.5 * torch.randn(x.shape, generator=g) for x in s]
    t = [torch.randn(n, 6, 2, 2, generator=g) for _ in range(3)]
    labels = torch.randint(0, 5, (n,), generator=g)
    flat = lambda x: x.reshape(n, -1).double()
    want_fss = [float(KF.distance_correlation(flat(x), flat(y))) for x, y in zip(s, t)]
    want_rs = [float(KF.relevance_score(flat(x), flat(y), labels, num_classes=5)) for x, y in zip(s, b)]
    want_res = [float(KF.relevance_score(flat(y), flat(x), labels, num_classes=5)) for x, y in zip(s, b)]

    calls = []
    real = KF.u_centered_distances
    counted = lambda x: calls.append(1) or real(x)  # noqa: E731
    monkeypatch.setattr(KF, "u_centered_distances", counted)
    monkeypatch.setattr(KF.metrics, "u_centered_distances", counted)  # the metrics' own calls (label distances)
    cache = similarity.DistanceCache()
    got_fss = similarity.fss_stages(s, t, "u_centered", cache)
    got_rs, got_res = similarity.rs_stages(s, b, labels, 5, "u_centered", cache)
    assert got_fss == want_fss and got_rs == want_rs and got_res == want_res  # bit-identical
    assert len(calls) == 10
    # without a shared cache each call still works (its own cache)
    assert similarity.relevance(s[0], b[0], labels, 5) == want_rs[0]
