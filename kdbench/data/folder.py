"""Datasets that stream from image files: ``imagefolder`` and ``waterbirds``.

``imagefolder`` (ImageNet, Tiny-ImageNet after re-foldering, ASIRRA, PlantVillage, ...)
reads ``<root>/train/<class>/*`` (required; the classes are the sorted sub-folder names)
and uses:

- ``test`` = ``<root>/test/<class>/*`` when ``test/`` exists *with class sub-folders*
  (an unlabelled flat ``test/`` is ignored), otherwise ``<root>/val/<class>/*``;
- ``val`` = carved out of ``train`` per class by ``seed`` (``val_fraction`` of each class,
  at least one image when the class has two or more), so model selection never looks at
  the test images. An error is raised when neither ``val/`` nor ``test/`` exists.

Files with the usual image extensions are taken, sorted by path. Training augmentation:
RandomResizedCrop(``image_size``) + horizontal flip; evaluation: resize the short side to
``int(image_size * 256 / 224)`` then centre crop ``image_size`` (both in
``dataset.augment``). Normalisation: the ImageNet mean/std.

``waterbirds`` reads ``<root>/metadata.csv`` (columns ``img_filename, y, split, place``;
split 0 train, 1 val, 2 test): ``groups = 2*y + place``, ``test_ood`` is the test split
itself and ``ood_metric = "worst_group"``. ``root`` defaults to
``<data_root or KDBENCH_DATA or ./data>/waterbirds`` (or
``.../waterbird_complete95_forest2water2``).

Fingerprints hash the sorted relative paths, file sizes and labels (cheap), not pixels.
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import torch

from kdbench.data.base import (DATASETS, FRACTION_OPTION, OPTION_TYPES, PATH_OPTION, SEED_OPTION, Dataset, FileSplit,
                               not_found, resolve_data_root)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _class_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _files(path: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
    return out


def _scan(path: str, class_to_idx: dict, name: str) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for c in _class_dirs(path):
        if c not in class_to_idx:
            raise ValueError(f"{name}: class folder {os.path.join(path, c)!r} is not among the training "
                             f"classes ({len(class_to_idx)} under train/)")
        fs = _files(os.path.join(path, c))
        paths += fs
        labels += [class_to_idx[c]] * len(fs)
    return paths, labels


def file_fingerprint(root: str, splits: dict, *extra) -> str:
    """sha256 (16 hex) over split names, relative paths, file sizes, labels and groups."""
    h = hashlib.sha256(repr(extra).encode())
    for name in sorted(splits):
        sp = splits[name]
        h.update(f"\0split {name} {len(sp)}\0".encode())
        groups = sp.groups.tolist() if sp.groups is not None else [None] * len(sp)
        for p, y, g in zip(sp.paths, sp.labels.tolist(), groups):
            h.update(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}\t{y}\t{g}\n".encode())
    return h.hexdigest()[:16]


def carve(labels: np.ndarray, fraction: float, seed: int):
    """(keep, holdout) sorted index arrays: per class, round(fraction * n_c) images (at least
    one when n_c >= 2, never all) held out by ``seed``."""
    rng = np.random.default_rng([seed, 224])
    hold = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        hold.append(rng.permutation(idx)[:k])
    hold = np.sort(np.concatenate(hold)) if hold else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), hold)
    return keep, hold


def _folder_augment(image_size: int) -> dict:
    return {"random_resized_crop": image_size, "flip": True, "eval_resize": int(image_size * 256 / 224)}


@DATASETS.register("imagefolder")
def imagefolder(root: str | None = None, image_size: int = 224, val_fraction: float = 0.1, seed: int = 0,
                name: str = "imagefolder") -> Dataset:
    """A ``train/<class>/*`` + ``val/<class>/*`` (or ``test/<class>/*``) tree; see the module
    docstring for the split convention. ``name`` labels the dataset in outputs."""
    if not root:
        raise not_found(name, "(no root given)", "the `root` option of the imagefolder dataset")
    root = os.path.expanduser(str(root))
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise not_found(name, os.path.abspath(train_dir), "the `root` option of the imagefolder dataset")
    classes = _class_dirs(train_dir)
    if not classes:
        raise not_found(name, f"{os.path.abspath(train_dir)} (no class sub-folders)", "the `root` option")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    test_dir = None
    for cand in ("test", "val"):
        d = os.path.join(root, cand)
        if os.path.isdir(d) and _class_dirs(d):
            test_dir = d
            break
    if test_dir is None:
        raise not_found(name, f"{os.path.abspath(root)}/val/<class>/* or test/<class>/*",
                        "the `root` option of the imagefolder dataset")
    if not 0 < float(val_fraction) < 1:
        raise ValueError(f"{name}: val_fraction must be in (0, 1), got {val_fraction}")
    tr_paths, tr_labels = _scan(train_dir, class_to_idx, name)
    te_paths, te_labels = _scan(test_dir, class_to_idx, name)
    if not tr_paths or not te_paths:
        raise not_found(name, f"{os.path.abspath(train_dir if not tr_paths else test_dir)} (no image files)",
                        "the `root` option of the imagefolder dataset")
    y = np.asarray(tr_labels, dtype=np.int64)
    keep, hold = carve(y, float(val_fraction), int(seed))
    full = FileSplit(tr_paths, torch.from_numpy(y))
    splits = {"train": full.subset(torch.from_numpy(keep)), "val": full.subset(torch.from_numpy(hold)),
              "test": FileSplit(te_paths, torch.tensor(te_labels, dtype=torch.int64))}
    image_size = int(image_size)
    return Dataset(
        name=name, splits=splits, num_classes=len(classes), class_names=classes,
        fingerprint=file_fingerprint(root, splits, classes), hierarchy=None,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=_folder_augment(image_size), image_size=image_size,
        ood_metric="accuracy",
        options=dict(root=root, image_size=image_size, val_fraction=float(val_fraction), seed=int(seed), name=name),
        meta={"test_folder": os.path.basename(test_dir)},
    )


@DATASETS.register("waterbirds")
def waterbirds(root: str | None = None, data_root: str | None = None, image_size: int = 224) -> Dataset:
    """Waterbirds from its ``metadata.csv`` folder (see the module docstring)."""
    setting = "the `root` (or `data_root`) option of waterbirds or the KDBENCH_DATA environment variable"
    if root:
        root = os.path.expanduser(str(root))
    else:
        base = resolve_data_root(data_root)
        cands = [os.path.join(base, "waterbirds"), os.path.join(base, "waterbird_complete95_forest2water2")]
        root = next((c for c in cands if os.path.isfile(os.path.join(c, "metadata.csv"))), cands[0])
    meta_csv = os.path.join(root, "metadata.csv")
    if not os.path.isfile(meta_csv):
        raise not_found("waterbirds", os.path.abspath(meta_csv), setting)
    with open(meta_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"img_filename", "y", "split", "place"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"waterbirds: {meta_csv} must have columns {sorted(need)}, "
                         f"got {sorted(rows[0]) if rows else 'no rows'}")
    by_split: dict[int, list] = {0: [], 1: [], 2: []}
    for r in rows:
        s = int(float(r["split"]))
        if s in by_split:
            by_split[s].append((os.path.join(root, r["img_filename"]), int(float(r["y"])), int(float(r["place"]))))
    missing = [p for part in by_split.values() for p, _, _ in part if not os.path.isfile(p)]
    if missing:
        raise not_found("waterbirds", f"{os.path.abspath(root)} ({len(missing)} image files listed in "
                        f"metadata.csv are missing, e.g. {missing[0]})", setting)
    splits = {}
    for name, s in (("train", 0), ("val", 1), ("test", 2)):
        part = by_split[s]
        if not part:
            raise ValueError(f"waterbirds: {meta_csv} has no rows with split == {s} ({name})")
        ys = torch.tensor([y for _, y, _ in part], dtype=torch.int64)
        places = torch.tensor([p for _, _, p in part], dtype=torch.int64)
        splits[name] = FileSplit([p for p, _, _ in part], ys, 2 * ys + places)
    splits["test_ood"] = splits["test"]
    image_size = int(image_size)
    return Dataset(
        name="waterbirds", splits=splits, num_classes=2, class_names=["landbird", "waterbird"],
        fingerprint=file_fingerprint(root, {k: v for k, v in splits.items() if k != "test_ood"}, "waterbirds"),
        hierarchy=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=_folder_augment(image_size),
        image_size=image_size, ood_metric="worst_group",
        options=dict(root=root, data_root=data_root, image_size=image_size),
        meta={"group_names": ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]},
    )

_FOLDER_IMAGE_SIZE = {"type": "integer", "minimum": 16, "maximum": 1024}
OPTION_TYPES["imagefolder"] = {"root": PATH_OPTION, "image_size": _FOLDER_IMAGE_SIZE, "val_fraction": FRACTION_OPTION,
                               "seed": SEED_OPTION, "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}}
OPTION_TYPES["waterbirds"] = {"root": PATH_OPTION, "data_root": PATH_OPTION, "image_size": _FOLDER_IMAGE_SIZE}
