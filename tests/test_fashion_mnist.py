"""``fashion_mnist``: IDX reading on tiny files in the real format (every check of the
reader), the search order and its error, the splits, masks and the OOD shift; and, where
Debian's ``dataset-fashion-mnist`` is installed (CI installs it), the real release."""
from __future__ import annotations

import gzip
import hashlib
import os
import time

import numpy as np
import pytest
import torch

from kdbench.data import build_dataset
from kdbench.data import fashion_mnist as fm
from kdbench.errors import DatasetNotFoundError

N_TRAIN, N_TEST = 400, 100  # tiny files: 40 / 10 images per class


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes (big-endian header: magic 0x0000 08 ndim, then each dim)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def garments(n: int, seed: int):
    """n 28×28 images: a bright rectangle with a dark hole on a zero background, whose
    height tells the class (so a silhouette and its filled hole are known exactly)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    x = np.zeros((n, 28, 28), np.uint8)
    for i, y in enumerate(labels):
        top = 2 + int(y)
        x[i, top:26, 6:22] = 200
        x[i, 12:15, 12:15] = 5  # a dark hole inside the outline: part of the silhouette
    return x, labels.astype(np.uint8)


@pytest.fixture
def tiny_release(tmp_path, monkeypatch):
    """The four files of a tiny release under tmp_path/fm, and the reader told their shapes
    and checksums (the real ones are 60,000 / 10,000 images)."""
    folder = tmp_path / "fm"
    folder.mkdir()
    tr_x, tr_y = garments(N_TRAIN, 0)
    te_x, te_y = garments(N_TEST, 1)
    arrays = {"train-images-idx3-ubyte": tr_x, "train-labels-idx1-ubyte": tr_y,
              "t10k-images-idx3-ubyte": te_x, "t10k-labels-idx1-ubyte": te_y}
    files, sha = {}, {}
    for stem, a in arrays.items():
        raw = idx_bytes(a)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        files[stem] = (fm.FILES[stem][0], a.shape)
        sha[stem] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setattr(fm, "FILES", files)
    monkeypatch.setattr(fm, "SHA256", sha)
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    return folder, arrays


def test_reads_tiny_idx_files_in_the_real_format(tiny_release):
    folder, arrays = tiny_release
    ds = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=28)
    assert ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [300, 100, 100]
    assert "test_ood" not in ds.splits  # no OOD split without the context
    # the test split is the t10k file, image for image; 28 px is native (no resize)
    assert torch.equal(ds.splits["test"].images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(ds.splits["test"].labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert ds.splits["train"].images.shape[1:] == (3, 28, 28)
    assert "official release" in ds.source and "SHA-256" in ds.source  # the board's note on the data
    # uncompressed files (torchvision keeps both) read the same
    for stem in arrays:
        (folder / stem).write_bytes(gzip.decompress((folder / f"{stem}.gz").read_bytes()))
        (folder / f"{stem}.gz").unlink()
    again = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=28)
    assert again.fingerprint == ds.fingerprint


def test_subsets_are_class_balanced_deterministic_and_val_is_never_test(tiny_release):
    folder, _ = tiny_release
    a = build_dataset("fashion_mnist", data_root=str(folder), n_train=200, n_val=50, image_size=16, seed=3)
    b = build_dataset("fashion_mnist", data_root=str(folder), n_train=200, n_val=50, image_size=16, seed=3)
    c = build_dataset("fashion_mnist", data_root=str(folder), n_train=200, n_val=50, image_size=16, seed=4)
    assert a.fingerprint == b.fingerprint and a.fingerprint != c.fingerprint
    assert torch.bincount(a.splits["train"].labels).tolist() == [20] * 10
    assert torch.bincount(a.splits["val"].labels).tolist() == [5] * 10
    tr, va = a.meta["source_index"]["train"], a.meta["source_index"]["val"]
    # val and train are disjoint rows of the training file; test is the t10k file
    assert not set(tr.tolist()) & set(va.tolist())
    assert len(a.splits["test"]) == N_TEST and a.splits["test"].images.shape[-1] == 16


def test_masks_are_the_filled_silhouette_above_the_threshold(tiny_release):
    folder, arrays = tiny_release
    ds = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=28)
    x = torch.from_numpy(arrays["t10k-images-idx3-ubyte"])
    expected = x > 0.05 * 255  # the rectangle
    hole = torch.zeros_like(expected)
    hole[:, 12:15, 12:15] = True
    assert not (expected & hole).any()  # the hole's pixels (5/255) are below the threshold...
    assert torch.equal(ds.splits["test"].masks, expected | hole)  # ...and filled in the silhouette
    # a threshold above the garment's intensity leaves nothing
    dark = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=28, mask_threshold=0.9)
    assert not dark.splits["test"].masks.any()
    # resized masks stay aligned: the rectangle's area shrinks with the image
    small = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=14)
    area = small.splits["test"].masks.float().mean() / ds.splits["test"].masks.float().mean()
    assert 0.9 < float(area) < 1.1


def test_ood_context_is_paired_in_train_and_absent_in_test_ood(tiny_release):
    folder, _ = tiny_release
    ds = build_dataset("fashion_mnist", data_root=str(folder), n_val=100, image_size=28, context_bias=True, bias=0.8)
    ctx, colours = ds.meta["context"], torch.tensor(ds.meta["context_colours"])
    for split, lo, hi in (("train", 0.65, 0.95), ("test", 0.6, 1.0)):
        paired = (ctx[split] == ds.splits[split].labels).float().mean()
        assert lo < float(paired) < hi, (split, paired)
    assert not (ctx["test_ood"] == ds.splits["test_ood"].labels).any()
    assert torch.equal(ds.splits["test_ood"].labels, ds.splits["test"].labels)
    # the colour is painted outside the silhouette only: the garment pixels are untouched
    sp = ds.splits["test_ood"]
    corner = sp.images[:, :, 0, 0].float() / 255
    assert torch.allclose(corner, colours[ctx["test_ood"]], atol=1 / 255 + 1e-6)
    inside = sp.masks[:, None].expand_as(sp.images)
    assert torch.equal(sp.images[inside], ds.splits["test"].images[inside])


def test_bad_files_give_one_clear_error_and_lose_nothing(tiny_release, tmp_path):
    folder, _ = tiny_release
    target = folder / "train-images-idx3-ubyte.gz"
    good = target.read_bytes()
    raw = gzip.decompress(good)
    cases = {
        "truncated gz": good[: len(good) // 2],
        "truncated content": gzip.compress(raw[: len(raw) - 100]),
        "wrong magic": gzip.compress(b"\x00\x00\x08\x01" + raw[4:]),
        "other data (checksum)": gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])),
    }
    expect = {"truncated gz": "truncated or corrupt", "truncated content": "truncated",
              "wrong magic": "magic number", "other data (checksum)": "SHA-256"}
    for name, blob in cases.items():
        target.write_bytes(blob)
        with pytest.raises(fm.FashionMnistFileError) as err:
            build_dataset("fashion_mnist", data_root=str(folder), n_val=100)
        msg = str(err.value)
        assert expect[name] in msg and str(target) in msg and "apt-get install dataset-fashion-mnist" in msg, msg
        assert "\n" not in msg
    target.write_bytes(good)  # the reader never touched the other files
    assert build_dataset("fashion_mnist", data_root=str(folder), n_val=100) is not None


def test_search_order_and_the_missing_folder_error(tiny_release, tmp_path, monkeypatch):
    folder, _ = tiny_release
    # $KDBENCH_DATA/fashion-mnist is searched after data_root, Debian's folder last
    env_root = tmp_path / "env"
    (env_root / "fashion-mnist").mkdir(parents=True)
    for f in folder.iterdir():
        (env_root / "fashion-mnist" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("KDBENCH_DATA", str(env_root))
    assert fm.find_files(None)["t10k-labels-idx1-ubyte"].startswith(str(env_root))
    assert fm.find_files(str(folder))["t10k-labels-idx1-ubyte"].startswith(str(folder))
    # torchvision's layout under data_root
    tv = tmp_path / "tv" / "FashionMNIST" / "raw"
    tv.mkdir(parents=True)
    for f in folder.iterdir():
        (tv / f.name).write_bytes(f.read_bytes())
    assert fm.find_files(str(tmp_path / "tv"))["train-images-idx3-ubyte"].startswith(str(tv))
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("fashion_mnist", data_root=str(tmp_path / "missing"))
    msg = str(err.value)
    for place in (str(tmp_path / "missing"), str(tmp_path / "nothing" / "fashion-mnist"), fm.DEBIAN_DIR):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg and "\n" not in msg


@pytest.mark.parametrize("option,value,needle", [
    ("image_size", 0, "image_size"), ("n_val", 15, "n_val"), ("n_train", -5, "n_train"),
    ("n_train", 10 ** 10, "n_train"), ("bias", 1.5, "bias"), ("mask_threshold", 1.0, "mask_threshold")])
def test_bad_options_fail_before_reading(option, value, needle, tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "find_files", lambda *_: pytest.fail("read files despite a bad option"))
    with pytest.raises(ValueError, match=needle):
        build_dataset("fashion_mnist", **{option: value})


REAL = os.path.isdir(fm.DEBIAN_DIR) and all(
    os.path.isfile(os.path.join(fm.DEBIAN_DIR, f"{s}.gz")) for s in fm.FILES)


@pytest.mark.skipif(not REAL, reason="Debian's dataset-fashion-mnist is not installed (CI installs it: .ci/run)")
def test_the_real_release_passes_its_checks_and_matches_the_default_options():
    t0 = time.time()
    ds = build_dataset("fashion_mnist", image_size=16, n_train=2000, n_val=1000, context_bias=True, bias=0.5)
    assert len(ds.splits["test"]) == 10000 and len(ds.splits["test_ood"]) == 10000
    assert torch.bincount(ds.splits["test"].labels).tolist() == [1000] * 10  # the official test split
    assert torch.bincount(ds.splits["train"].labels).tolist() == [200] * 10
    # the silhouettes cover about half of each image (the garments), never all of it
    cover = ds.splits["test"].masks.float().mean(dim=(1, 2))
    assert 0.3 < float(cover.mean()) < 0.7 and float(cover.max()) < 1.0
    paired = (ds.meta["context"]["train"] == ds.splits["train"].labels).float().mean()
    assert 0.45 < float(paired) < 0.55  # bias 0.5 (an "other" colour is never the class's own)
    assert not (ds.meta["context"]["test_ood"] == ds.splits["test_ood"].labels).any()
    assert time.time() - t0 < 60


def _ensure_data():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ensure_data.py"
    spec = importlib.util.spec_from_file_location("ensure_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_data_finds_installs_or_says_what_to_run(tiny_release, tmp_path, monkeypatch, capsys):
    """scripts/ensure_data.py (`make data`, before `make run` and in CI): files found -> 0;
    missing and installable -> installs (apt-get, here stubbed) and checks again; missing
    and not installable -> one line naming the package and the download, exit 1."""
    import yaml

    folder, _ = tiny_release
    mod = _ensure_data()
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"datasets": {"fashion_mnist": {"data_root": str(folder)}}}))
    monkeypatch.setattr(mod, "install", lambda: pytest.fail("installed although the files are there"))
    assert mod.main(["--params", str(profile)]) == 0
    missing = tmp_path / "q.yaml"
    missing.write_text(yaml.safe_dump({"datasets": {"fashion_mnist": {"data_root": str(tmp_path / "none")}}}))
    monkeypatch.setattr(mod, "install", lambda: False)
    assert mod.main(["--params", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "apt-get install dataset-fashion-mnist" in err and "download=True" in err

    def fake_install():  # what apt-get does: the files appear in the package's folder
        monkeypatch.setattr(fm, "DEBIAN_DIR", str(folder))
        return True

    monkeypatch.setattr(mod, "install", fake_install)
    assert mod.main(["--params", str(missing)]) == 0
    other = tmp_path / "r.yaml"  # a profile without fashion_mnist needs nothing
    other.write_text(yaml.safe_dump({"datasets": {"shapes": {}}}))
    monkeypatch.setattr(mod, "install", lambda: pytest.fail("installed for a profile that does not read it"))
    assert mod.main(["--params", str(other)]) == 0
