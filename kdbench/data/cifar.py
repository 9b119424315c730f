"""``cifar10`` / ``cifar100`` from torchvision's on-disk format.

Files are looked up under ``<root>/cifar-10-batches-py/`` (``data_batch_1..5``,
``test_batch``, ``batches.meta``) or ``<root>/cifar-100-python/`` (``train``, ``test``,
``meta``), where ``root`` is the ``data_root`` option, else the ``KDBENCH_DATA``
environment variable, else ``./data``; ``data_root`` may also point straight at the
pickle folder. ``download=True`` lets torchvision fetch the archive into ``root`` first
(needs internet). The pickles are read directly with ``pickle`` + numpy (the Python-2
pickles decode with ``encoding="latin1"``).

A stratified validation split of ``val_size`` images (default 5000) is held out of the
50k training images by ``seed``; ``test`` is the official test set. CIFAR-100's 20
superclasses (the ``coarse_labels`` of the pickle) are its hierarchy:
``[[fine ids of superclass 0], ..., [fine ids of superclass 19]], [[0], ..., [99]]``.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from kdbench.errors import KDBenchError
from kdbench.data.base import DATASETS, OPTION_TYPES, PATH_OPTION, SEED_OPTION, TRAIN_CLASS_MIN, Dataset, Split, fingerprint_tensors, not_found, resolve_data_root

_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": (["train"], ["test"], "meta"),
}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SETTING = "the `data_root` param or the KDBENCH_DATA environment variable"


def _str(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


class CifarFileError(KDBenchError, ValueError):
    """A CIFAR batch file that is not what torchvision's archive holds."""


#: what a CIFAR pickle may build: numpy's array reconstruction and nothing else (plain
#: dicts, lists, str, bytes and ints need no global)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, str, numbers and numpy arrays only: a crafted file
    that names any other global (``os.system``, ``builtins.eval``...) is refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds")


EXPECTED = ("a pickled dict with 'data' (uint8, N×3072 = N×3×32×32) and one label per row, "
            "as in torchvision's cifar-10-python.tar.gz / cifar-100-python.tar.gz")


def load_pickle(path: str) -> dict:
    """A CIFAR pickle as a dict with ``str`` keys (Python-2 pickles: latin1 strings),
    read with a restricted unpickler (no code runs from the file)."""
    try:
        with open(path, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CifarFileError(f"{path} is not a valid CIFAR batch ({type(err).__name__}: {err}); expected "
                             f"{EXPECTED}: download the archive again") from None
    if not isinstance(d, dict):
        raise CifarFileError(f"{path} holds a {type(d).__name__}, not a dict; expected {EXPECTED}")
    return {_str(k): v for k, v in d.items()}


def _read_batch(path: str, label_key: str):
    d = load_pickle(path)
    if "data" not in d or label_key not in d:
        raise CifarFileError(f"{path} has keys {sorted(d)[:8]}, missing {'data' if 'data' not in d else label_key!r}; "
                             f"expected {EXPECTED}")
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
        coarse = np.asarray(d["coarse_labels"], dtype=np.int64) if "coarse_labels" in d else None
    except (TypeError, ValueError) as err:
        raise CifarFileError(f"{path}: 'data' or the labels are not arrays ({err}); expected {EXPECTED}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),) \
            or (coarse is not None and coarse.shape != labels.shape):
        raise CifarFileError(f"{path}: 'data' is {data.dtype} of shape {data.shape} with {labels.shape} labels; "
                             f"expected {EXPECTED}")
    return data.reshape(-1, 3, 32, 32), labels, coarse


def _read_batches(folder: str, files, label_key: str):
    xs, ys, coarse = [], [], []
    for fn in files:
        x, y, c = _read_batch(os.path.join(folder, fn), label_key)
        xs.append(x)
        ys.append(y)
        if c is not None:
            coarse.append(c)
    return (np.concatenate(xs), np.concatenate(ys), np.concatenate(coarse) if coarse else None)


def stratified_holdout(labels: np.ndarray, n_holdout: int, seed: int):
    """(keep, holdout) sorted index arrays: ``n_holdout`` indices held out, allocated over
    classes in proportion to their counts (largest remainder), drawn per class by ``seed``."""
    classes, counts = np.unique(labels, return_counts=True)
    n = len(labels)
    quota = n_holdout * counts / n
    k = np.floor(quota).astype(np.int64)
    rest = n_holdout - int(k.sum())
    order = np.lexsort((classes, -(quota - k)))  # largest fractional part first, ties by class
    k[order[:rest]] += 1
    k = np.minimum(k, counts - 1)  # never take a whole class
    while k.sum() < n_holdout:  # give the shortfall to classes that can spare an image
        spare = np.nonzero(k < counts - 1)[0]
        if len(spare) == 0:
            break
        k[spare[np.argmax((quota - k)[spare])]] += 1
    rng = np.random.default_rng([seed, 5000])
    hold = []
    for c, kc in zip(classes, k):
        idx = np.nonzero(labels == c)[0]
        hold.append(rng.permutation(idx)[:kc])
    hold = np.sort(np.concatenate(hold))
    mask = np.ones(n, bool)
    mask[hold] = False
    return np.nonzero(mask)[0], hold


def _find(name: str, data_root) -> tuple[str, str]:
    root = resolve_data_root(data_root)
    folder = os.path.join(root, _FOLDERS[name])
    train_files, test_files, meta_file = _FILES[name]
    needed = train_files + test_files + [meta_file]
    for cand in (folder, root):
        if all(os.path.isfile(os.path.join(cand, f)) for f in needed):
            return root, cand
    return root, folder


def _build(name: str, data_root, download: bool, val_size: int, seed: int) -> Dataset:
    root, folder = _find(name, data_root)
    train_files, test_files, meta_file = _FILES[name]
    needed = train_files + test_files + [meta_file]
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(root, train=True, download=True)
        root, folder = _find(name, data_root)
        missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise not_found(name, f"{os.path.abspath(folder)} (missing {', '.join(missing)})", SETTING,
                        hint="Or set `download: true` in params where the machine has internet")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    xtr, ytr, ctr = _read_batches(folder, train_files, label_key)
    xte, yte, _ = _read_batches(folder, test_files, label_key)
    meta = load_pickle(os.path.join(folder, meta_file))
    if name == "cifar10":
        class_names = [_str(s) for s in meta["label_names"]]
    else:
        class_names = [_str(s) for s in meta["fine_label_names"]]
    num_classes = len(class_names)
    val_size, seed = int(val_size), int(seed)
    if not 0 < val_size < len(ytr):
        raise ValueError(f"{name}: val_size must be in [1, {len(ytr) - 1}], got {val_size}")
    keep, hold = stratified_holdout(ytr, val_size, seed)

    def split(x, y, idx=None):
        if idx is not None:
            x, y = x[idx], y[idx]
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))

    splits = {"train": split(xtr, ytr, keep), "val": split(xtr, ytr, hold), "test": split(xte, yte)}
    hierarchy = None
    dmeta: dict = {}
    if name == "cifar100" and ctr is not None:
        coarse_names = [_str(s) for s in meta.get("coarse_label_names", [])]
        fine_to_coarse = {}
        for f, c in zip(ytr.tolist(), ctr.tolist()):
            fine_to_coarse.setdefault(f, c)
        groups = sorted({c for c in fine_to_coarse.values()})
        hierarchy = [[sorted(f for f, c in fine_to_coarse.items() if c == g) for g in groups],
                     [[k] for k in range(num_classes)]]
        dmeta = {"coarse_names": [coarse_names[g] if g < len(coarse_names) else str(g) for g in groups],
                 "fine_to_coarse": [fine_to_coarse.get(k, -1) for k in range(num_classes)]}
    parts = [name, class_names, hierarchy]
    for sname, sp in splits.items():
        parts += [sname, sp.images, sp.labels]
    mean, std = MEAN_STD[name]
    return Dataset(
        name=name, splits=splits, num_classes=num_classes, class_names=class_names,
        fingerprint=fingerprint_tensors(*parts), hierarchy=hierarchy, mean=mean, std=std,
        augment={"crop_pad": 4, "flip": True}, image_size=32, ood_metric="accuracy",
        options=dict(data_root=data_root, download=bool(download), val_size=val_size, seed=seed),
        meta={"path": os.path.abspath(folder), **dmeta},
    )


@DATASETS.register("cifar10")
def cifar10(data_root: str | None = None, download: bool = False, val_size: int = 5000, seed: int = 0) -> Dataset:
    """CIFAR-10 (see the module docstring)."""
    return _build("cifar10", data_root, download, val_size, seed)


@DATASETS.register("cifar100")
def cifar100(data_root: str | None = None, download: bool = False, val_size: int = 5000, seed: int = 0) -> Dataset:
    """CIFAR-100 with its 20 superclasses as hierarchy (see the module docstring)."""
    return _build("cifar100", data_root, download, val_size, seed)


def _min_train_per_class(per_class: int, num_classes: int):
    # 50k balanced training images; stratified_holdout takes ceil(val_size / K) at most per class
    return lambda o: per_class - -(-int(o.get("val_size", 5000)) // num_classes)


TRAIN_CLASS_MIN["cifar10"] = _min_train_per_class(5000, 10)
TRAIN_CLASS_MIN["cifar100"] = _min_train_per_class(500, 100)
for _name in ("cifar10", "cifar100"):
    # val_size images are held out of the 50k training images, at most half of each class
    OPTION_TYPES[_name] = {"data_root": PATH_OPTION, "download": {"type": "boolean"},
                           "val_size": {"type": "integer", "minimum": 1, "maximum": 25_000}, "seed": SEED_OPTION}
