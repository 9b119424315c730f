"""Tiny datasets written in the real on-disk formats, for tests and benchmarks.

CIFAR pickles are written the way the originals were (Python 2 ``cPickle``): byte strings
(dict keys, class names, the array buffer) are stored as Python-2 ``str`` opcodes, so they
load as ``str`` with ``encoding="latin1"`` and as ``bytes`` with ``encoding="bytes"``,
exactly like the files torchvision downloads.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
import struct

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python-2 ``str`` (BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: bytes):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2str


def dump_py2(obj, path: str) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root: str, per_batch: int = 20, n_test: int = 30, seed: int = 0, num_classes: int = 10) -> str:
    """``<root>/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images, a
    test batch and ``batches.meta``. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        labels = [int(x) for x in (np.arange(per_batch) + i) % num_classes]
        dump_py2({b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels,
                  b"data": _images(rng, per_batch),
                  b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)]},
                 os.path.join(folder, f"data_batch_{i}"))
    dump_py2({b"batch_label": b"testing batch 1 of 1", b"labels": [int(x) for x in np.arange(n_test) % num_classes],
              b"data": _images(rng, n_test), b"filenames": [f"test_{k}.png".encode() for k in range(n_test)]},
             os.path.join(folder, "test_batch"))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump_py2({b"num_cases_per_batch": per_batch, b"label_names": names[:num_classes], b"num_vis": 3072},
             os.path.join(folder, "batches.meta"))
    return folder


def cifar100_coarse(fine: int) -> int:
    """The fake fine -> coarse map (5 fine classes per superclass, interleaved)."""
    return fine % 20


def write_cifar100(root: str, per_class: int = 3, n_test_per_class: int = 1, seed: int = 0) -> str:
    """``<root>/cifar-100-python`` with ``train``, ``test`` and ``meta``. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, k in (("train", per_class), ("test", n_test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), k))
        dump_py2({b"filenames": [f"{name}_{i}.png".encode() for i in range(len(fine))],
                  b"batch_label": f"{name} batch 1 of 1".encode(),
                  b"fine_labels": [int(f) for f in fine], b"coarse_labels": [cifar100_coarse(int(f)) for f in fine],
                  b"data": _images(rng, len(fine))}, os.path.join(folder, name))
    dump_py2({b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
              b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]},
             os.path.join(folder, "meta"))
    return folder


def write_png(path: str, rng, size=(20, 16)) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_imagefolder(root: str, classes=("cat", "dog", "fox"), n_train: int = 6, n_val: int = 2,
                      test: bool = False, seed: int = 0) -> str:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (+ ``test/`` if asked)."""
    rng = np.random.default_rng(seed)
    parts = [("train", n_train), ("val", n_val)] + ([("test", n_val)] if test else [])
    for part, n in parts:
        for c in classes:
            for i in range(n):
                write_png(os.path.join(root, part, c, f"{c}_{i}.png"), rng)
    return root


def write_waterbirds(root: str, per_group=(4, 2, 3), seed: int = 0) -> str:
    """A waterbirds folder: bird-species sub-folders of JPEGs and ``metadata.csv`` with
    img_filename, y, split, place, place_filename; ``per_group[s]`` images of each of the
    four (y, place) groups in split s."""
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for split, n in enumerate(per_group):
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(n):
                    k += 1
                    species = "001.Black_footed_Albatross" if y else "002.Laysan_Albatross"
                    rel = f"{species}/bird_{k:04d}.jpg"
                    from PIL import Image

                    os.makedirs(os.path.join(root, species), exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(os.path.join(root, rel))
                    rows.append({"img_id": k, "img_filename": rel, "y": y, "split": split, "place": place,
                                 "place_filename": f"/b/bamboo_forest/{k:08d}.jpg"})
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def unchecked_cifar(cls):
    """A subclass of torchvision's ``CIFAR10``/``CIFAR100`` without the md5 checks, so that
    torchvision's own reader accepts the fake files (cross-check / benchmark)."""
    return type(f"Unchecked{cls.__name__}", (cls,), {
        "train_list": [[f, None] for f, _ in cls.train_list],
        "test_list": [[f, None] for f, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })
