"""``digits``: scikit-learn's bundled UCI handwritten digits (1797 images, 8×8, 10 classes).

Real data that ships with an installed package (no download). The 8×8 intensity images
(0..16) are upsampled to ``image_size`` with bilinear interpolation
(``torch.nn.functional.interpolate``, ``align_corners=False``; ``interpolation="nearest"``
gives blocky pixels instead), replicated to 3 channels, and split per class (stratified)
into train/val/test by ``seed`` (default 60/15/25 %). Masks: the ink pixels, i.e.
upsampled intensity > ``ink_threshold`` (default 0.5 of full ink).

Default look: white ink on black. With ``colour_bias=True`` the ink stays white and the
background gets a mid-saturation, mid-value colour: the colour paired with the class (hue
k/10) with probability ``bias``, else a uniformly drawn other class's colour; ``test_ood``
(only with ``colour_bias``; the test digits re-coloured) always carries an unpaired colour.
Per-image colour ids are in ``dataset.meta["context"][split]``; the rows of sklearn's
array each split holds in ``dataset.meta["source_index"][split]``. No horizontal flips
(digits are not mirror-symmetric).
"""
from __future__ import annotations

import numpy as np
import torch

from kdbench.data.base import (DATASETS, FRACTION_OPTION, OPTION_TYPES, SEED_OPTION, TRAIN_CLASS_MIN, Dataset,
                               Split, channel_stats, fingerprint_splits)
from kdbench.errors import UnknownChoiceError
from kdbench.data.shapes import hsv_to_rgb

SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "test_ood": 3}


def stratified_split(labels: np.ndarray, fractions, seed: int) -> list:
    """Split indices per class by fixed ``seed``: for each class, a seeded permutation of its
    indices cut at the rounded cumulative ``fractions`` (the last part takes the rest).
    Returns one sorted index array per fraction."""
    rng = np.random.default_rng([seed, 1797])
    parts = [[] for _ in fractions]
    bounds = np.cumsum(fractions)
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        cuts = [0] + [int(round(b * len(idx))) for b in bounds[:-1]] + [len(idx)]
        for j in range(len(fractions)):
            parts[j].append(idx[cuts[j]:cuts[j + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


def background_colours(k: int) -> np.ndarray:
    """k background colours (k×3 in [0, 1]): evenly spaced hues, saturation 0.7, value 0.55,
    so that white ink stays visible on every one of them."""
    return hsv_to_rgb(np.arange(k) / k, np.full(k, 0.7), np.full(k, 0.55))


@DATASETS.register("digits")
def digits(image_size: int = 32, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.25,
           colour_bias: bool = False, bias: float = 0.9, interpolation: str = "bilinear",
           ink_threshold: float = 0.5) -> Dataset:
    """Build the ``digits`` dataset (see the module docstring)."""
    from sklearn.datasets import load_digits

    image_size, seed = int(image_size), int(seed)
    if interpolation not in ("bilinear", "nearest"):
        raise UnknownChoiceError("digits interpolation", interpolation, ["bilinear", "nearest"])
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"digits: need 0 < val_fraction, test_fraction and their sum < 1, "
                         f"got {val_fraction}, {test_fraction}")
    if not 0.0 <= float(bias) <= 1.0:
        raise ValueError(f"digits: bias must be in [0, 1], got {bias}")
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]  # N×1×8×8 in [0, 1]
    if image_size != 8:
        kw = {"align_corners": False} if interpolation == "bilinear" else {}
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode=interpolation, **kw)
    ink = x[:, 0].clamp_(0, 1)  # N×H×W
    labels = raw.target.astype(np.int64)
    names = ["train", "val", "test"]
    index = dict(zip(names, stratified_split(labels, [1 - val_fraction - test_fraction, val_fraction,
                                                      test_fraction], seed)))
    if colour_bias:
        index["test_ood"] = index["test"]
    colours = torch.from_numpy(background_colours(10).astype(np.float32))  # 10×3
    splits, contexts = {}, {}
    for name, idx in index.items():
        y = labels[idx]
        a = ink[torch.from_numpy(idx)]  # n×H×W
        if colour_bias:
            rng = np.random.default_rng([seed, SPLIT_IDS[name], 10])
            other = (y + rng.integers(1, 10, len(y))) % 10
            ctx = other if name == "test_ood" else np.where(rng.random(len(y)) < bias, y, other)
            bg = colours[torch.from_numpy(ctx)][:, :, None, None]  # n×3×1×1
            img = bg * (1 - a[:, None]) + a[:, None]  # white ink over the colour
            contexts[name] = torch.from_numpy(ctx.astype(np.int64))
        else:
            img = a[:, None].expand(-1, 3, -1, -1)
        images = (img * 255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()
        splits[name] = Split(images, torch.from_numpy(y), a > ink_threshold)
    mean, std = channel_stats(splits["train"].images)
    options = dict(image_size=image_size, seed=seed, val_fraction=float(val_fraction),
                   test_fraction=float(test_fraction), colour_bias=bool(colour_bias), bias=float(bias),
                   interpolation=interpolation, ink_threshold=float(ink_threshold))
    meta = {"source_index": {k: torch.from_numpy(v.astype(np.int64)) for k, v in index.items()}}
    if colour_bias:
        meta |= {"context": contexts, "paired_context": list(range(10)),
                "context_colours": colours.tolist()}
    return Dataset(
        name="digits", splits=splits, num_classes=10, class_names=[str(k) for k in range(10)],
        fingerprint=fingerprint_splits("digits", splits, contexts), hierarchy=None, mean=mean, std=std,
        augment={"crop_pad": max(1, image_size // 8), "flip": False}, image_size=image_size,
        ood_metric="accuracy", options=options, meta=meta,
        source="scikit-learn's load_digits (the UCI ML hand-written digits test set, 1797 images of 8×8)",
    )


#: images per class of sklearn's digits (load_digits().target, fixed data)
CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
# stratified_split cuts each class's permutation at round(train_fraction * n_c)
TRAIN_CLASS_MIN["digits"] = lambda o: min(
    int(round((1 - float(o.get("val_fraction", 0.15)) - float(o.get("test_fraction", 0.25))) * n))
    for n in CLASS_COUNTS)
OPTION_TYPES["digits"] = {"image_size": {"type": "integer", "minimum": 8, "maximum": 128}, "seed": SEED_OPTION,
                          "val_fraction": FRACTION_OPTION, "test_fraction": FRACTION_OPTION,
                          "colour_bias": {"type": "boolean"}, "bias": {"type": "number", "minimum": 0, "maximum": 1},
                          "interpolation": {"enum": ["bilinear", "nearest"]},
                          "ink_threshold": {"type": "number", "minimum": 0, "maximum": 1}}
