"""``fashion_mnist``: Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017), read from
the official release's four IDX gz files (60,000 training and 10,000 test images, 28×28
grayscale, 10 classes). Nothing is downloaded.

Where the files are looked for, in this order (``find_files``):

1. the ``data_root`` option (the folder holding the four files, or torchvision's
   ``<root>/FashionMNIST/raw``);
2. ``$KDBENCH_DATA/fashion-mnist``;
3. Debian's / Ubuntu's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

Each file is checked on its *decompressed* content: the IDX magic number, the shape in its
header, its size, and the SHA-256 of the decompressed bytes (``SHA256``). Debian's gz files
are re-compressed (their md5s differ from those of the official download) but hold the
same bytes, so both sources pass.

Splits: ``val`` is ``n_val`` images carved out of the 60,000 training images (class
balanced, drawn by ``seed``; never from the test split); ``train`` is ``n_train`` of the
rest (class balanced, drawn by ``seed``; ``None``: all of the rest), the teachers' set
(the students' ``student_shots`` subset is drawn from it by the trainer); ``test`` is the
full official test split. Images are replicated to 3 channels and resized to
``image_size`` once, here, with an antialiased bilinear resize (28 is native).

Masks (EPG's foreground): the garment's silhouette, i.e. the pixels above
``mask_threshold`` (a fraction of full intensity, default 0.05 = 13/255; the background
of Fashion-MNIST is 0 in half of all pixels and below 13 in 55 %) with the holes inside
the outline filled (``scipy.ndimage.binary_fill_holes``), computed at 28 px and resized
with the images (antialiased, kept where ≥ 0.5).

OOD split (``context_bias=True``; CID's claim): the background outside the silhouette is
painted with a colour, the colour paired with the class (hue k/10, as ``digits``' colour
bias) with probability ``bias`` in ``train``/``val``/``test`` and a uniformly drawn other
class's colour otherwise; ``test_ood`` holds the test images with an *unpaired* colour
always. The garment pixels are untouched, so the shift changes only a context that
correlates with the class at training time. Per-image colour ids are in
``dataset.meta["context"][split]``.

Coarse groups (``HIERARCHY[0]``, the ground truth of the tree metrics): tops {T-shirt/top,
Pullover, Coat, Shirt}, Trouser, Dress, footwear {Sandal, Sneaker, Ankle boot}, Bag: the
garment types a shopper tells apart first (upper-body garments with sleeves or straps,
legwear, one-piece, shoes, bags). Seo & Shin (2019), "Hierarchical convolutional neural
networks for fashion image classification" (Expert Systems with Applications 116,
328-339), classify Fashion-MNIST along an apparel hierarchy of the same kind; this grouping
is kdbench's choice, stated here and in docs/data.md.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from typing import Dict, Optional

import numpy as np
import torch

from kdbench.data.base import (DATASETS, OPTION_TYPES, PATH_OPTION, SEED_OPTION, TRAIN_CLASS_MIN, Dataset, Split,
                                channel_stats, fingerprint_splits)
from kdbench.data.digits import background_colours  # the same class-paired hues (k/10)
from kdbench.errors import DatasetNotFoundError, KDBenchError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
COARSE_NAMES = ["tops", "trouser", "dress", "footwear", "bag"]
HIERARCHY = [[[0, 2, 4, 6], [1], [3], [5, 7, 9], [8]], [[k] for k in range(10)]]

#: file -> (IDX magic number, shape) of the official release
FILES = {
    "train-images-idx3-ubyte": (2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (60000,)),
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (10000,)),
}
#: SHA-256 of each file's decompressed bytes (the official release; the gz files of the
#: download and of Debian's package differ, these do not)
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
RELEASE = "Fashion-MNIST, official release (zalandoresearch/fashion-mnist, 2017)"
#: the board's note on the data: the release and the checksum the files were checked against
SOURCE = (f"{RELEASE}; files checked by the SHA-256 of their decompressed content (train images "
          f"{SHA256['train-images-idx3-ubyte'][:12]}…, test images {SHA256['t10k-images-idx3-ubyte'][:12]}…)")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
GET_IT = ("get the files with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or on a machine "
          "with internet: python -c \"import torchvision; torchvision.datasets.FashionMNIST('DIR', "
          "download=True)\" and set data_root: DIR/FashionMNIST/raw")
N_CLASSES = 10
TRAIN_PER_CLASS = 6000


class FashionMnistFileError(KDBenchError, ValueError):
    """A Fashion-MNIST file that is not the official release's (truncated, corrupt, other data)."""


def candidate_dirs(data_root: Optional[str] = None) -> list:
    """The folders searched, in order (see the module docstring)."""
    dirs = []
    if data_root:
        root = os.path.expanduser(str(data_root))
        dirs += [root, os.path.join(root, "FashionMNIST", "raw")]
    if os.environ.get("KDBENCH_DATA"):
        dirs.append(os.path.join(os.path.expanduser(os.environ["KDBENCH_DATA"]), "fashion-mnist"))
    return dirs + [DEBIAN_DIR]


def _file_in(folder: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def find_files(data_root: Optional[str] = None) -> Dict[str, str]:
    """stem -> path of the four files, from the first searched folder that holds all four;
    ``DatasetNotFoundError`` naming every folder searched and how to get the files."""
    dirs = candidate_dirs(data_root)
    for folder in dirs:
        paths = {stem: _file_in(folder, stem) for stem in FILES}
        if all(paths.values()):
            return paths
    err = DatasetNotFoundError("fashion_mnist", ", ".join(dirs), "the `data_root` option or $KDBENCH_DATA")
    err.args = (f"dataset 'fashion_mnist' not found: none of {', '.join(dirs)} holds the four files "
                f"({', '.join(s + '.gz' for s in FILES)}); {GET_IT}",)
    raise err


def read_idx(path: str, stem: str, check_sha: bool = True) -> np.ndarray:
    """One IDX file (gz or plain) as a uint8 array, after checking its magic number, the
    shape in its header, its size and (``check_sha``) the SHA-256 of its decompressed bytes."""
    magic, shape = FILES[stem]
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise FashionMnistFileError(f"{path} cannot be read ({type(err).__name__}: {err}): the file is truncated "
                                    f"or corrupt; {GET_IT}") from None
    header = 4 * (1 + len(shape))
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise FashionMnistFileError(f"{path}: IDX magic number {got}, expected {magic} ({stem}); {GET_IT}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(len(shape)))
    if dims != shape or len(raw) != header + int(np.prod(shape)):
        raise FashionMnistFileError(f"{path}: shape {dims} and {len(raw) - header} data bytes, expected {shape} "
                                    f"({int(np.prod(shape))} bytes): the file is truncated or not {stem}; {GET_IT}")
    if check_sha:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHA256[stem]:
            raise FashionMnistFileError(f"{path}: SHA-256 of the decompressed content is {digest}, expected "
                                        f"{SHA256[stem]} (the official release): not the official data; {GET_IT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def balanced_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude=None) -> np.ndarray:
    """Sorted indices: ``per_class`` rows of every class, drawn by ``rng`` among the rows
    not in ``exclude`` (classes in increasing order)."""
    free = np.ones(len(labels), bool)
    if exclude is not None:
        free[exclude] = False
    out = []
    for c in range(N_CLASSES):
        idx = np.nonzero((labels == c) & free)[0]
        if per_class > len(idx):
            raise ValueError(f"fashion_mnist: class {c} has {len(idx)} images left, {per_class} asked")
        out.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(out))


def silhouettes(images: np.ndarray, threshold: float) -> np.ndarray:
    """bool N×H×W: pixels above ``threshold`` × 255 with the holes inside each outline
    filled (per image: an empty plane pads each side so that no image touches the stack's
    border along the image axis)."""
    from scipy import ndimage  # only the data job needs scipy

    fg = images > threshold * 255.0
    planar = np.zeros((3, 3, 3), bool)
    planar[1] = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(fg, ((1, 1), (0, 0), (0, 0)))
    return ndimage.binary_fill_holes(padded, structure=planar)[1:-1]


def paint(gray: np.ndarray, mask: np.ndarray, context: Optional[np.ndarray]) -> torch.Tensor:
    """float N×3×28×28 in [0, 1]: the grayscale garment, with the background outside the
    silhouette painted in ``background_colours(N_CLASSES)[context]`` (None: left as it is)."""
    x = torch.from_numpy(gray.astype(np.float32) / 255.0)[:, None].expand(-1, 3, -1, -1)
    if context is None:
        return x.contiguous()
    bg = torch.from_numpy(background_colours(N_CLASSES).astype(np.float32))[torch.from_numpy(context)][:, :, None, None]
    m = torch.from_numpy(mask)[:, None].float()
    return x * m + bg * (1 - m)


def to_size(x: torch.Tensor, mask: np.ndarray, size: int):
    """(uint8 images, bool masks) at ``size`` px: antialiased bilinear resize, done once."""
    m = torch.from_numpy(mask)[:, None].float()
    if size != 28:
        kw = dict(size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = torch.nn.functional.interpolate(x, **kw)
        m = torch.nn.functional.interpolate(m, **kw)
    images = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    return images, m[:, 0] >= 0.5


def contexts(labels: np.ndarray, bias: float, rng: np.random.Generator, ood: bool) -> np.ndarray:
    """Per-image colour ids: the class's own with probability ``bias`` (never for ``ood``),
    else a uniformly drawn other class's."""
    other = (labels + rng.integers(1, N_CLASSES, len(labels))) % N_CLASSES
    return other if ood else np.where(rng.random(len(labels)) < bias, labels, other)


def _splits(labels: np.ndarray, n_train: Optional[int], n_val: int, seed: int) -> Dict[str, np.ndarray]:
    """Row indices of the 60,000 training images for ``val`` and ``train`` (class balanced)."""
    rng = np.random.default_rng([seed, 2017])
    val = balanced_pick(labels, n_val // N_CLASSES, rng)
    left = int(np.bincount(labels, minlength=N_CLASSES).min()) - n_val // N_CLASSES
    per_class = left if n_train is None else int(n_train) // N_CLASSES
    return {"train": balanced_pick(labels, per_class, rng, exclude=val), "val": val}


def check_options(image_size, n_train, n_val, bias, mask_threshold) -> None:
    """Ranges of the options, checked before any file is read."""
    if not 4 <= int(image_size) <= 28:
        raise ValueError(f"fashion_mnist: image_size must be in [4, 28] (28 is native), got {image_size}")
    if int(n_val) % N_CLASSES or not 0 < int(n_val) <= 10000:
        raise ValueError(f"fashion_mnist: n_val must be a multiple of 10 in [10, 10000], got {n_val}")
    if n_train is not None and (int(n_train) % N_CLASSES or not 0 < int(n_train) <= 60000 - int(n_val)):
        raise ValueError(f"fashion_mnist: n_train must be a multiple of 10 in [10, 60000 - n_val] or null, "
                         f"got {n_train}")
    if not 0.0 <= float(bias) <= 1.0:
        raise ValueError(f"fashion_mnist: bias must be in [0, 1], got {bias}")
    if not 0.0 <= float(mask_threshold) < 1.0:
        raise ValueError(f"fashion_mnist: mask_threshold must be in [0, 1), got {mask_threshold}")


@DATASETS.register("fashion_mnist")
def fashion_mnist(image_size: int = 28, n_train: Optional[int] = None, n_val: int = 2000, seed: int = 0,
                  context_bias: bool = False, bias: float = 0.5, mask_threshold: float = 0.05,
                  data_root: Optional[str] = None) -> Dataset:
    """Build ``fashion_mnist`` (see the module docstring)."""
    check_options(image_size, n_train, n_val, bias, mask_threshold)
    image_size, n_val, seed = int(image_size), int(n_val), int(seed)
    paths = find_files(data_root)
    raw = {stem: read_idx(path, stem) for stem, path in paths.items()}
    train_y = raw["train-labels-idx1-ubyte"].astype(np.int64)
    index = _splits(train_y, n_train, n_val, seed)
    sources = {"train": (raw["train-images-idx3-ubyte"], train_y, index["train"]),
               "val": (raw["train-images-idx3-ubyte"], train_y, index["val"]),
               "test": (raw["t10k-images-idx3-ubyte"], raw["t10k-labels-idx1-ubyte"].astype(np.int64), None)}
    if context_bias:
        sources["test_ood"] = sources["test"]
    splits, ctx = {}, {}
    for k, (name, (images, labels, idx)) in enumerate(sources.items()):
        gray, y = (images, labels) if idx is None else (images[idx], labels[idx])
        mask = silhouettes(gray, float(mask_threshold))
        if context_bias:
            ctx[name] = contexts(y, float(bias), np.random.default_rng([seed, k, 10]), name == "test_ood")
        x, m = to_size(paint(gray, mask, ctx.get(name)), mask, image_size)
        splits[name] = Split(x, torch.from_numpy(np.ascontiguousarray(y)), m)
    return _dataset(splits, ctx, dict(image_size=image_size, n_train=None if n_train is None else int(n_train),
                                      n_val=n_val, seed=seed, context_bias=bool(context_bias), bias=float(bias),
                                      mask_threshold=float(mask_threshold)),
                    {k: torch.from_numpy(v.astype(np.int64)) for k, v in index.items()})


def _dataset(splits: dict, ctx: dict, options: dict, source_index: dict) -> Dataset:
    mean, std = channel_stats(splits["train"].images)
    meta = {"source_index": source_index, "release": RELEASE, "sha256": dict(SHA256),
            "coarse_names": COARSE_NAMES}
    if ctx:
        meta |= {"context": {k: torch.from_numpy(v.astype(np.int64)) for k, v in ctx.items()},
                 "paired_context": list(range(N_CLASSES)), "context_colours": background_colours(N_CLASSES).tolist()}
    size = options["image_size"]
    return Dataset(name="fashion_mnist", splits=splits, num_classes=N_CLASSES, class_names=list(CLASS_NAMES),
                   fingerprint=fingerprint_splits("fashion_mnist", splits, ctx), hierarchy=HIERARCHY, mean=mean, std=std,
                   augment={"crop_pad": max(1, size // 8), "flip": True}, image_size=size,
                   ood_metric="accuracy", options=options, meta=meta, source=SOURCE)


TRAIN_CLASS_MIN["fashion_mnist"] = lambda o: (
    TRAIN_PER_CLASS - int(o.get("n_val", 2000)) // N_CLASSES if o.get("n_train") is None
    else int(o["n_train"]) // N_CLASSES)
OPTION_TYPES["fashion_mnist"] = {
    "image_size": {"type": "integer", "minimum": 4, "maximum": 28},
    "n_train": {"type": ["integer", "null"], "minimum": 10, "maximum": 59990, "multipleOf": 10},
    "n_val": {"type": "integer", "minimum": 10, "maximum": 10000, "multipleOf": 10},
    "seed": SEED_OPTION, "context_bias": {"type": "boolean"}, "bias": {"type": "number", "minimum": 0, "maximum": 1},
    "mask_threshold": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "data_root": PATH_OPTION}
