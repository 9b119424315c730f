"""Datasets (shapes, digits, cifar, imagefolder, waterbirds), few-shot sampling and the loader."""
from __future__ import annotations

import pytest
import torch

from tests import fakedata
from kdbench.data import build_dataset
from kdbench.data.base import FileSplit, Split
from kdbench.data.loader import make_loader
from kdbench.data.sampling import few_shot, few_shot_indices
from kdbench.errors import DatasetNotFoundError, UnknownChoiceError

SMALL = dict(n_train=400, n_val=80, n_test=80, n_test_ood=80)


@pytest.fixture(scope="module")
def shapes_big():
    return build_dataset("shapes", n_train=4000, n_val=200, n_test=200, n_test_ood=800)


@pytest.fixture(scope="module")
def shapes_small():
    return build_dataset("shapes", **SMALL)


def _splits_equal(a, b):
    assert a.splits.keys() == b.splits.keys()
    for k in a.splits:
        sa, sb = a.splits[k], b.splits[k]
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.labels, sb.labels)
        assert (sa.masks is None and sb.masks is None) or torch.equal(sa.masks, sb.masks)


def check_hierarchy(h, k):
    assert h[-1] == [[c] for c in range(k)]
    for level in h:
        flat = sorted(c for g in level for c in g)
        assert flat == list(range(k)), "each level is a partition of the classes"
        assert all(len(g) > 0 for g in level)
    for coarse, fine in zip(h, h[1:]):
        assert len(coarse) <= len(fine)
        for g in fine:  # every fine group lies inside one coarse group
            assert sum(set(g) <= set(c) for c in coarse) == 1


# ---------------------------------------------------------------- shapes
def test_shapes_deterministic_and_fingerprint(shapes_small):
    again = build_dataset("shapes", **SMALL)
    _splits_equal(shapes_small, again)
    assert torch.equal(shapes_small.meta["context"]["train"], again.meta["context"]["train"])
    assert shapes_small.fingerprint == again.fingerprint
    other = build_dataset("shapes", **SMALL, seed=1)
    assert other.fingerprint != shapes_small.fingerprint
    assert not torch.equal(other.splits["train"].images, shapes_small.splits["train"].images)
    assert build_dataset("shapes", **SMALL, bias=0.5).fingerprint != shapes_small.fingerprint
    assert build_dataset("shapes", **SMALL, image_size=24).fingerprint != shapes_small.fingerprint
    # each split has its own stream: more training images leave test untouched
    bigger = build_dataset("shapes", **{**SMALL, "n_train": 500})
    assert torch.equal(bigger.splits["test"].images, shapes_small.splits["test"].images)


def test_shapes_structure(shapes_small):
    d = shapes_small
    assert d.num_classes == 8 and len(d.class_names) == 8 and len(set(d.class_names)) == 8
    assert set(d.splits) == {"train", "val", "test", "test_ood"} and d.has_ood and d.has_masks
    for name, n in [("train", 400), ("val", 80), ("test", 80), ("test_ood", 80)]:
        sp = d.splits[name]
        assert isinstance(sp, Split) and len(sp) == n
        assert sp.images.shape == (n, 3, 32, 32) and sp.images.dtype == torch.uint8
        assert sp.masks.shape == (n, 32, 32) and sp.labels.dtype == torch.int64
        assert d.meta["context"][name].shape == (n,)
    assert torch.bincount(d.splits["train"].labels, minlength=8).tolist() == [50] * 8
    assert d.augment == {"crop_pad": 4, "flip": True}
    assert len(d.mean) == 3 and len(d.std) == 3 and all(0 < s < 1 for s in d.std)
    check_hierarchy(d.hierarchy, 8)
    assert len(d.hierarchy) >= 3 and len(d.hierarchy[0]) == 2 and len(d.hierarchy[1]) == 4
    big = build_dataset("shapes", n_train=16, n_val=8, n_test=8, n_test_ood=8, image_size=64)
    assert big.splits["train"].images.shape[-1] == 64 and big.augment["crop_pad"] == 8


def test_shapes_bias(shapes_big):
    d = shapes_big
    paired = lambda s: (d.meta["context"][s] == d.splits[s].labels).float().mean().item()
    assert abs(paired("train") - 0.9) < 0.025
    assert paired("test_ood") == 0.0
    ctx = d.meta["context"]["test_ood"]
    assert set(ctx.tolist()) == set(range(8))
    # unpaired contexts are spread over the other classes' contexts
    lab = d.splits["test_ood"].labels
    for c in range(2):
        counts = torch.bincount(ctx[lab == c], minlength=8)
        assert counts[c] == 0 and (counts > 0).sum() == 7
    half = build_dataset("shapes", n_train=2000, n_val=8, n_test=8, n_test_ood=8, bias=0.5)
    frac = (half.meta["context"]["train"] == half.splits["train"].labels).float().mean().item()
    assert abs(frac - 0.5) < 0.05


def test_shapes_masks_exact(shapes_big):
    sp = shapes_big.splits["train"]
    area = sp.masks.flatten(1).sum(1)
    assert area.min() >= 20 and area.max() < 32 * 32 * 0.6
    # the mask is exactly the drawn foreground: foreground pixels are bright, background dim
    bright = sp.images.max(dim=1).values.float()  # N×H×W
    assert bright[sp.masks].min() >= 0.8 * 255 - 20
    assert bright[~sp.masks].max() <= 0.55 * 255 + 20
    # and it sits inside the image: the border rows/cols are almost never foreground
    border = sp.masks[:, [0, -1], :].any(-1).any(-1) | sp.masks[:, :, [0, -1]].any(-1).any(-1)
    assert border.float().mean() < 0.05


def test_shapes_colour_not_class_informative(shapes_big):
    sp = shapes_big.splits["train"]
    x = sp.images.float() / 255
    m = sp.masks[:, None].float()
    fg = (x * m).sum((2, 3)) / m.sum((2, 3))  # N×3 mean foreground colour
    overall = fg.mean(0)
    for c in range(8):
        assert (fg[sp.labels == c].mean(0) - overall).abs().max() < 0.04
    # the nuisances are class-independent too: foreground position
    ys = torch.arange(32.0)
    cy = (sp.masks.float().sum(2) * ys).sum(1) / sp.masks.flatten(1).sum(1)
    for c in range(8):
        assert abs(cy[sp.labels == c].mean() - cy.mean()) < 1.0


def test_shapes_coarse_is_local_fine_is_global():
    """The hierarchy a CNN can find: the coarse group (solid vs hollow part) is decided
    by one 3×3 patch; the classes within a group share their local geometry (the apex's
    two neighbours at the same distance D) and differ only in the third, global distance."""
    from kdbench.data.shapes import PART_OF_CLASS, part_centres

    d = build_dataset("shapes", image_size=16, n_train=800, n_val=8, n_test=8, n_test_ood=8)
    sp = d.splits["train"]
    m = sp.masks.float()[:, None]
    ring = torch.nn.functional.conv2d(torch.nn.functional.pad(m, (1, 1, 1, 1)), torch.ones(1, 1, 3, 3)) - m
    hole = ((ring[:, 0] == 8) & (m[:, 0] == 0)).flatten(1).any(1)  # background ringed by foreground
    coarse = torch.tensor(PART_OF_CLASS)[sp.labels].bool()
    assert (hole == coarse).float().mean() >= 0.99
    assert d.hierarchy[0] == [[k for k in range(8) if PART_OF_CLASS[k] == g] for g in (0, 1)]

    import numpy as np
    labels = np.arange(4000) % 8
    c = part_centres(labels, 16, np.random.default_rng(0)).astype(float)
    near = np.linalg.norm(c[:, 1:] - c[:, :1], axis=-1).mean(1)  # apex to its two neighbours
    far = np.linalg.norm(c[:, 1] - c[:, 2], axis=-1)
    near_mean = [near[labels == k].mean() for k in range(8)]
    far_mean = [far[labels == k].mean() for k in range(8)]
    assert max(near_mean) - min(near_mean) < 0.5  # the same local geometry in every class
    for g in (0, 4):  # line > obtuse > right > equilateral (2D, 1.73D, 1.41D, D: ~1-1.7 px apart)
        assert all(far_mean[g + i] - far_mean[g + i + 1] > 0.75 for i in range(3)), far_mean


def test_prepared_shapes_of_another_generator_version_are_rebuilt(tmp_path):
    from kdbench.data.cache import load_dataset, prepared_path, save_dataset

    opts = dict(image_size=16, n_train=16, n_val=8, n_test=8, n_test_ood=8)
    fresh = load_dataset("shapes", opts, tmp_path)
    assert fresh.meta["generator_version"] == 2
    old = build_dataset("shapes", **opts)
    old.options, old.meta = dict(opts), {**old.meta, "generator_version": 1}
    old.splits["train"].images.zero_()  # what an older generator drew
    save_dataset(old, prepared_path(tmp_path, "shapes"))
    again = load_dataset("shapes", opts, tmp_path)
    assert torch.equal(again.splits["train"].images, fresh.splits["train"].images)


# ---------------------------------------------------------------- digits
def test_digits_default():
    d = build_dataset("digits")
    src = d.meta["source_index"]
    assert set(d.splits) == {"train", "val", "test"} and not d.has_ood and d.hierarchy is None
    sizes = {k: len(v) for k, v in d.splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["train"] / 1797 - 0.6) < 0.01 and abs(sizes["test"] / 1797 - 0.25) < 0.01
    allidx = torch.cat([src[k] for k in ("train", "val", "test")])
    assert sorted(allidx.tolist()) == list(range(1797)), "splits are disjoint and complete"
    for k, sp in d.splits.items():
        counts = torch.bincount(sp.labels, minlength=10).float()
        assert (counts / counts.sum() - 0.1).abs().max() < 0.015, "stratified"
        assert sp.images.shape[1:] == (3, 32, 32)
        assert torch.equal(sp.images[:, 0], sp.images[:, 1]) and torch.equal(sp.images[:, 0], sp.images[:, 2])
        assert sp.masks.flatten(1).sum(1).min() > 0
        g = sp.images[:, 0].float()  # masks are the ink pixels (> half of full ink)
        assert g[sp.masks].min() >= 127 and g[~sp.masks].max() <= 128 and g[sp.masks].mean() > 180
    assert d.augment["flip"] is False and d.augment["crop_pad"] == 4
    # labels really are sklearn's
    from sklearn.datasets import load_digits

    assert torch.equal(d.splits["test"].labels, torch.from_numpy(load_digits().target[src["test"].numpy()]).long())
    again = build_dataset("digits")
    _splits_equal(d, again)
    assert again.fingerprint == d.fingerprint
    assert build_dataset("digits", seed=1).fingerprint != d.fingerprint
    assert build_dataset("digits", image_size=16).splits["train"].images.shape[-1] == 16


def test_digits_colour_bias():
    d = build_dataset("digits", colour_bias=True)
    assert d.has_ood
    paired = {s: (d.meta["context"][s] == d.splits[s].labels).float().mean().item() for s in d.splits}
    assert abs(paired["train"] - 0.9) < 0.04 and paired["test_ood"] == 0.0
    assert torch.equal(d.splits["test_ood"].labels, d.splits["test"].labels)
    for sp in d.splits.values():
        x = sp.images.float()
        lum = x.mean(1)
        ink = (lum * sp.masks).flatten(1).sum(1) / sp.masks.flatten(1).sum(1)
        bg = (lum * ~sp.masks).flatten(1).sum(1) / (~sp.masks).flatten(1).sum(1)
        assert (ink - bg).min() > 60, "ink visible on every background colour"
        assert (x[:, 0] != x[:, 1]).any()
    assert build_dataset("digits").fingerprint != d.fingerprint


# ---------------------------------------------------------------- cifar
def test_cifar10_real_format(tmp_path):
    import torchvision

    fakedata.write_cifar10(str(tmp_path), per_batch=20, n_test=30)
    d = build_dataset("cifar10", data_root=str(tmp_path), val_size=10)
    assert d.num_classes == 10 and d.class_names[:2] == ["airplane", "automobile"]
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 90, "val": 10, "test": 30}
    assert sorted(d.splits["val"].labels.tolist()) == list(range(10)), "stratified validation split"
    assert d.augment == {"crop_pad": 4, "flip": True} and d.mean[0] == pytest.approx(0.4914)
    # the same pixels and labels as torchvision's own reader of these files
    ref = fakedata.unchecked_cifar(torchvision.datasets.CIFAR10)(str(tmp_path), train=False)
    assert torch.equal(d.splits["test"].images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    assert d.splits["test"].labels.tolist() == ref.targets
    ref = fakedata.unchecked_cifar(torchvision.datasets.CIFAR10)(str(tmp_path), train=True)
    tr = torch.cat([d.splits["train"].images, d.splits["val"].images]).flatten(1)
    assert sorted(map(bytes, tr.numpy())) == sorted(map(bytes, ref.data.transpose(0, 3, 1, 2).reshape(100, -1)))
    # deterministic; the seed moves the validation split
    assert build_dataset("cifar10", data_root=str(tmp_path), val_size=10).fingerprint == d.fingerprint
    assert build_dataset("cifar10", data_root=str(tmp_path), val_size=10, seed=1).fingerprint != d.fingerprint


def test_cifar_env_and_direct_folder(tmp_path, monkeypatch):
    folder = fakedata.write_cifar10(str(tmp_path), per_batch=4, n_test=5)
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    assert len(build_dataset("cifar10", val_size=10).splits["train"]) == 10
    monkeypatch.delenv("KDBENCH_DATA")
    assert len(build_dataset("cifar10", data_root=folder, val_size=10).splits["test"]) == 5


def test_cifar100_hierarchy(tmp_path):
    fakedata.write_cifar100(str(tmp_path), per_class=3, n_test_per_class=1)
    d = build_dataset("cifar100", data_root=str(tmp_path), val_size=100)
    assert d.num_classes == 100 and d.class_names[7] == "fine07"
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 200, "val": 100, "test": 100}
    check_hierarchy(d.hierarchy, 100)
    assert len(d.hierarchy) == 2 and len(d.hierarchy[0]) == 20
    for g in d.hierarchy[0]:
        assert len({fakedata.cifar100_coarse(c) for c in g}) == 1 and len(g) == 5
    assert d.meta["coarse_names"][0] == "coarse00"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing(tmp_path, monkeypatch, name):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset(name, data_root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "data_root" in msg and "KDBENCH_DATA" in msg
    assert "download" in msg
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere"):
        build_dataset(name)


# ---------------------------------------------------------------- folders
def test_imagefolder(tmp_path):
    root = fakedata.write_imagefolder(str(tmp_path / "tree"), n_train=6, n_val=2)
    d = build_dataset("imagefolder", root=root, image_size=16)
    assert d.class_names == ["cat", "dog", "fox"] and d.num_classes == 3
    assert all(isinstance(s, FileSplit) for s in d.splits.values())
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 15, "val": 3, "test": 6}
    assert all("/val/" in p for p in d.splits["test"].paths)
    assert all("/train/" in p for p in d.splits["val"].paths), "val is carved from train"
    assert not set(d.splits["val"].paths) & set(d.splits["train"].paths)
    assert d.augment == {"random_resized_crop": 16, "flip": True, "eval_resize": 18}
    assert build_dataset("imagefolder", root=root, image_size=16).fingerprint == d.fingerprint
    assert build_dataset("imagefolder", root=root, image_size=16, seed=3).fingerprint != d.fingerprint
    # loader: both modes, same dict format, deterministic whatever the number of workers
    ev = make_loader(d, "test", 4, train=False)
    batches = list(ev)
    assert [len(b["label"]) for b in batches] == [4, 2]
    assert batches[0]["image"].shape == (4, 3, 16, 16) and batches[0]["image"].dtype == torch.float32
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    tr0 = make_loader(d, "train", 4, train=True, seed=1)
    tr2 = make_loader(d, "train", 4, train=True, seed=1, num_workers=2)
    assert len(tr0) == 3
    for L in (tr0, tr2):
        L.set_epoch(5)
    a, b = list(tr0), list(tr2)
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
    tr0.set_epoch(6)
    assert not torch.equal(next(iter(tr0))["image"], a[0]["image"])


def test_imagefolder_test_folder_and_missing(tmp_path):
    root = fakedata.write_imagefolder(str(tmp_path / "t"), n_train=5, n_val=2, test=True)
    d = build_dataset("imagefolder", root=root, image_size=16, val_fraction=0.2)
    assert all("/test/" in p for p in d.splits["test"].paths)
    assert len(d.splits["val"]) == 3 and len(d.splits["train"]) == 12
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("imagefolder", root=str(tmp_path / "none"))
    assert str(tmp_path / "none") in str(e.value) and "root" in str(e.value)


def test_waterbirds(tmp_path, monkeypatch):
    root = fakedata.write_waterbirds(str(tmp_path / "waterbirds"), per_group=(4, 2, 3))
    d = build_dataset("waterbirds", root=root, image_size=16)
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 16, "val": 8, "test": 12, "test_ood": 12}
    assert d.ood_metric == "worst_group" and d.splits["test_ood"] is d.splits["test"]
    for sp in d.splits.values():
        assert torch.bincount(sp.groups, minlength=4).tolist() == [len(sp) // 4] * 4
        assert torch.equal(sp.groups // 2, sp.labels)
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    assert build_dataset("waterbirds", image_size=16).fingerprint == d.fingerprint
    batch = next(iter(make_loader(d, "test_ood", 5, train=False)))
    assert batch["image"].shape == (5, 3, 16, 16) and set(batch) == {"image", "label", "index"}
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("waterbirds", root=str(tmp_path / "nope"))
    assert "metadata.csv" in str(e.value) and str(tmp_path / "nope") in str(e.value)


# ---------------------------------------------------------------- errors
def test_unknown_names():
    with pytest.raises(UnknownChoiceError) as e:
        build_dataset("shapez")
    assert "shapez" in str(e.value) and "shapes" in str(e.value) and "cifar100" in str(e.value)
    with pytest.raises(UnknownChoiceError) as e:
        build_dataset("shapes", imagesize=16)
    assert "imagesize" in str(e.value) and "image_size" in str(e.value)
    with pytest.raises(UnknownChoiceError) as e:
        build_dataset("digits", colour_bais=True)
    assert "colour_bias" in str(e.value)
    d = build_dataset("shapes", n_train=8, n_val=8, n_test=8, n_test_ood=8)
    with pytest.raises(UnknownChoiceError) as e:
        make_loader(d, "tset", 4, train=False)
    assert "tset" in str(e.value) and "test_ood" in str(e.value)


# ---------------------------------------------------------------- loader
def _unnormalise(d, x):
    mean = torch.tensor(d.mean).view(1, -1, 1, 1)
    std = torch.tensor(d.std).view(1, -1, 1, 1)
    return (x * std + mean) * 255


def _all(loader):
    return [dict(b) for b in loader]


def test_loader_determinism_and_coverage(shapes_small):
    d = shapes_small
    mk = lambda **kw: make_loader(d, "train", 64, train=True, seed=kw.pop("seed", 0), **kw)
    a, b = mk(), mk()
    a.set_epoch(2)
    b.set_epoch(2)  # a fresh loader at the same epoch (a resumed run) sees the same batches
    ba, bb = _all(a), _all(b)
    for x, y in zip(ba, bb):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert len(a) == 400 // 64 == len(ba), "drop_last defaults to train"
    a.set_epoch(3)
    assert not torch.equal(next(iter(a))["index"], ba[0]["index"])
    c = mk(seed=1)
    c.set_epoch(2)
    assert not torch.equal(next(iter(c))["index"], ba[0]["index"])
    full = mk(drop_last=False)
    full.set_epoch(7)
    idx = torch.cat([bt["index"] for bt in full])
    assert len(full) == 7 and sorted(idx.tolist()) == list(range(400)), "every index once per epoch"
    bt = ba[0]
    assert bt["image"].dtype == torch.float32 and bt["label"].dtype == torch.int64
    assert bt["mask"].dtype == torch.bool and bt["mask"].shape == (64, 32, 32)
    assert torch.equal(bt["label"], d.splits["train"].labels[bt["index"]])


def test_loader_augmentation_is_a_crop_and_flip_shared_with_aligned(shapes_small):
    d = shapes_small
    sp = d.splits["train"]
    aligned = {"gray": sp.images[:, 0].clone(), "rgb": sp.images.float(), "mask2": sp.masks.clone(),
               "logits": torch.randn(len(sp), 8)}
    L = make_loader(d, "train", 100, train=True, seed=3, aligned=aligned)
    L.set_epoch(1)
    p = d.augment["crop_pad"]
    moved = flipped = 0
    for bt in L:
        img = _unnormalise(d, bt["image"])
        assert torch.allclose(img[:, 0], bt["gray"].float(), atol=0.02)
        assert torch.allclose(img, bt["rgb"], atol=0.02)
        assert torch.equal(bt["mask"], bt["mask2"])
        assert torch.equal(bt["logits"], aligned["logits"][bt["index"]])
        raw = torch.nn.functional.pad(sp.images[bt["index"]].float(), (p, p, p, p))
        rmask = torch.nn.functional.pad(sp.masks[bt["index"]], (p, p, p, p))
        for i in range(0, len(img), 10):  # it is exactly one crop (+ flip) of the padded image
            hits = []
            for oy in range(2 * p + 1):
                for ox in range(2 * p + 1):
                    crop = raw[i, :, oy:oy + 32, ox:ox + 32]
                    for f in (0, 1):
                        if torch.allclose(img[i], crop.flip(-1) if f else crop, atol=0.02):
                            hits.append((oy, ox, f))
            assert hits, "augmented image is a crop/flip of its padded source"
            oy, ox, f = hits[0]
            m = rmask[i, oy:oy + 32, ox:ox + 32]
            assert torch.equal(bt["mask"][i], m.flip(-1) if f else m)
            moved += (oy, ox) != (p, p)
            flipped += f
    assert moved > 0 and flipped > 0


def test_loader_eval_unaugmented(shapes_small):
    d = shapes_small
    L = make_loader(d, "test", 32, train=False, seed=5)
    assert len(L) == 3
    bts = _all(L)
    assert torch.cat([b["index"] for b in bts]).tolist() == list(range(80))
    x = torch.cat([b["image"] for b in bts])
    assert torch.allclose(_unnormalise(d, x), d.splits["test"].images.float(), atol=0.02)
    assert torch.equal(torch.cat([b["mask"] for b in bts]), d.splits["test"].masks)
    # digits: no flips ever
    dg = build_dataset("digits")
    L = make_loader(dg, "train", 256, train=True)
    assert L.flip is False and L.pad == 4


def test_loader_small_split_and_errors(shapes_small):
    d = shapes_small
    sub = few_shot(d.splits["train"], 2, seed=0)
    L = make_loader(d, sub, 64, train=True)
    assert len(L) == 1 and len(next(iter(L))["index"]) == 16, "a split smaller than a batch still yields"
    with pytest.raises(ValueError, match="rows"):
        make_loader(d, "train", 8, train=True, aligned={"x": torch.zeros(3, 32, 32)})
    with pytest.raises(ValueError, match="H×W"):
        make_loader(d, "train", 8, train=True, aligned={"x": torch.zeros(400, 16, 16)})


def test_few_shot(shapes_small):
    sp = shapes_small.splits["train"]
    a = few_shot(sp, 5, seed=0)
    assert torch.bincount(a.labels, minlength=8).tolist() == [5] * 8 and a.masks.shape[0] == 40
    assert torch.equal(a.images, few_shot(sp, 5, seed=0).images)
    assert not torch.equal(few_shot_indices(sp.labels, 5, 0), few_shot_indices(sp.labels, 5, 1))
    idx = few_shot_indices(sp.labels, 5, 0)
    assert torch.equal(a.images, sp.images[idx])
    with pytest.raises(ValueError, match="class 0 has 50 images"):
        few_shot(sp, 51, seed=0)
