"""``shapes``: a procedurally generated diagnostic dataset with known ground truth.

Eight shape classes in a three-level hierarchy (2 coarse groups -> 4 families -> 8
classes)::

    curved   (round outlines)   convex:     0 circle    1 ellipse
                                 non-convex: 2 ring      3 crescent
    straight (straight edges)   convex:     4 triangle  5 square
                                 non-convex: 6 cross     7 hourglass

Every image is a single filled shape on a textured, tinted background *context*. Each
class k has a paired context k (a tint of hue k/8 plus one of eight textures); in
``train``/``val``/``test`` an image carries its class's context with probability ``bias``
and a uniformly drawn *other* context otherwise; ``test_ood`` always carries an other
context. The per-image context ids are in ``dataset.meta["context"][split]`` (int64),
``dataset.meta["paired_context"][k] == k``.

Foreground position, scale, rotation and colour are drawn per image independently of the
class (colour: random hue, saturation 0.3-1, value 0.8-1: always brighter than the
backgrounds, whose value is at most 0.55). Masks are the exact drawn foreground pixels.
Everything is vectorised numpy driven by ``np.random.default_rng((seed, split))``: the
same options give byte-identical tensors on the same platform, and each split is drawn
from its own stream (changing ``n_train`` does not change ``test``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kdbench.data.base import DATASETS, TRAIN_CLASS_MIN, Dataset, Split, fingerprint_tensors

CLASS_NAMES = ["circle", "ellipse", "ring", "crescent", "triangle", "square", "cross", "hourglass"]
COARSE_NAMES = ["curved", "straight"]
FAMILY_NAMES = ["curved-convex", "curved-nonconvex", "straight-convex", "straight-nonconvex"]
HIERARCHY = [
    [[0, 1, 2, 3], [4, 5, 6, 7]],
    [[0, 1], [2, 3], [4, 5], [6, 7]],
    [[k] for k in range(8)],
]
TEXTURE_NAMES = ["h-stripes", "v-stripes", "diagonal", "checker", "dots", "grid", "waves", "grain"]
HUE_NAMES = ["red", "orange", "yellow-green", "green", "cyan", "blue", "violet", "magenta"]
CONTEXT_NAMES = [f"{HUE_NAMES[k]} {TEXTURE_NAMES[k]}" for k in range(8)]
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "test_ood": 3}
_EXTENT = 1.2  # every shape fits in a disc of this radius (in units of the scale r)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, inputs in [0, 1] of one shape, output shape + (3,)."""
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ], 0)  # 6 x ... x 3
    return np.take_along_axis(table, i[None, ..., None], 0)[0]


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of class ``cls`` in local (rotated, scaled) coordinates."""
    r2 = u * u + v * v
    if cls == 0:  # circle
        return r2 <= 0.85 ** 2
    if cls == 1:  # ellipse
        return (u / 1.1) ** 2 + (v / 0.55) ** 2 <= 1.0
    if cls == 2:  # ring
        return (r2 <= 0.95 ** 2) & (r2 >= 0.5 ** 2)
    if cls == 3:  # crescent: disc minus an offset disc
        return (r2 <= 0.95 ** 2) & ((u - 0.5) ** 2 + v * v >= 0.75 ** 2)
    if cls == 4:  # equilateral triangle, circumradius 1.1 (inradius 0.55)
        out = None
        for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            d = u * math.cos(a) + v * math.sin(a)
            out = d if out is None else np.maximum(out, d)
        return out <= 0.55
    if cls == 5:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if cls == 6:  # cross
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))
    if cls == 7:  # hourglass: two triangles meeting at a narrow waist
        av = np.abs(v)
        return (av <= 0.9) & (np.abs(u) <= 0.1 + 0.72 * av)
    raise ValueError(cls)


def _texture(k: int, x: np.ndarray, y: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Texture of context ``k`` in [0, 1] on per-image shifted pixel grids x, y (n×H×W)."""
    w = 2 * math.pi / period
    if k == 0:
        return (np.sin(w * y) > 0).astype(np.float32)
    if k == 1:
        return (np.sin(w * x) > 0).astype(np.float32)
    if k == 2:
        return (np.sin(w * (x + y) / math.sqrt(2)) > 0).astype(np.float32)
    if k == 3:
        return ((np.sin(w * x) * np.sin(w * y)) > 0).astype(np.float32)
    if k == 4:
        return ((np.sin(w * x) * np.sin(w * y)) > 0.5).astype(np.float32)
    if k == 5:
        return ((np.cos(w * x) > 0.8) | (np.cos(w * y) > 0.8)).astype(np.float32)
    if k == 6:
        return (0.5 + 0.25 * (np.sin(0.5 * w * x) + np.sin(0.5 * w * y))).astype(np.float32)
    if k == 7:
        return rng.random(x.shape, dtype=np.float32)
    raise ValueError(k)


def _render(labels: np.ndarray, contexts: np.ndarray, size: int, rng: np.random.Generator):
    """Render images (uint8 n×3×H×W) and masks (bool n×H×W) for the given classes/contexts."""
    n = len(labels)
    # per-image, class-independent nuisance parameters (drawn in a fixed order)
    scale = rng.uniform(0.2, 0.32, n) * size
    margin = _EXTENT * scale
    cx = margin + rng.random(n) * np.maximum(size - 2 * margin, 0)
    cy = margin + rng.random(n) * np.maximum(size - 2 * margin, 0)
    theta = rng.uniform(0, 2 * math.pi, n)
    fg = hsv_to_rgb(rng.random(n), rng.uniform(0.3, 1.0, n), rng.uniform(0.8, 1.0, n))  # n×3
    bg_level = rng.uniform(0.3, 0.5, n)  # background brightness scale
    shift = rng.uniform(0, size, (n, 2))  # texture phase
    tints = hsv_to_rgb(np.arange(8) / 8.0, np.full(8, 0.6), np.ones(8))  # 8×3

    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    grid = np.arange(size, dtype=np.float32) + 0.5
    period = max(size / 6.0, 3.0)
    chunk = max(1, (1 << 21) // (size * size))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        X = grid[None, None, :]
        Y = grid[None, :, None]
        dx = X - cx[s:e, None, None].astype(np.float32)
        dy = Y - cy[s:e, None, None].astype(np.float32)
        c = np.cos(theta[s:e]).astype(np.float32)[:, None, None]
        sn = np.sin(theta[s:e]).astype(np.float32)[:, None, None]
        inv = (1.0 / scale[s:e]).astype(np.float32)[:, None, None]
        u = (c * dx + sn * dy) * inv
        v = (c * dy - sn * dx) * inv
        m = np.zeros((e - s, size, size), bool)
        tex = np.empty((e - s, size, size), np.float32)
        xs = X + shift[s:e, 0, None, None].astype(np.float32)
        ys = Y + shift[s:e, 1, None, None].astype(np.float32)
        lab, ctx = labels[s:e], contexts[s:e]
        for k in range(8):
            sel = np.nonzero(lab == k)[0]
            if len(sel):
                m[sel] = _shape_mask(k, u[sel], v[sel])
            sel = np.nonzero(ctx == k)[0]
            if len(sel):
                tex[sel] = _texture(k, np.broadcast_to(xs[sel], (len(sel), size, size)),
                                    np.broadcast_to(ys[sel], (len(sel), size, size)), period, rng)
        level = (bg_level[s:e, None, None] * (0.55 + 0.45 * tex)).astype(np.float32)  # n×H×W
        bg = tints[ctx].astype(np.float32)[:, :, None, None] * level[:, None]  # n×3×H×W
        img = np.where(m[:, None], fg[s:e].astype(np.float32)[:, :, None, None], bg)
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.02)
        images[s:e] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        masks[s:e] = m
    return images, masks


def _make_split(n: int, bias: float, ood: bool, size: int, seed: int, split_id: int):
    rng = np.random.default_rng([seed, split_id, 8])
    labels = rng.permutation(np.arange(n) % 8)
    other = (labels + rng.integers(1, 8, n)) % 8
    if ood:
        contexts = other
    else:
        contexts = np.where(rng.random(n) < bias, labels, other)
    images, masks = _render(labels, contexts, size, rng)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(masks))
    return split, torch.from_numpy(contexts.astype(np.int64))


@DATASETS.register("shapes")
def shapes(image_size: int = 32, n_train: int = 5000, n_val: int = 1000, n_test: int = 2000,
           n_test_ood: int = 2000, bias: float = 0.9, seed: int = 0) -> Dataset:
    """Build the ``shapes`` dataset (see the module docstring)."""
    image_size, seed = int(image_size), int(seed)
    if image_size < 8:
        raise ValueError(f"shapes: image_size must be >= 8, got {image_size}")
    if not 0.0 <= float(bias) <= 1.0:
        raise ValueError(f"shapes: bias must be in [0, 1], got {bias}")
    sizes = {"train": n_train, "val": n_val, "test": n_test, "test_ood": n_test_ood}
    for k, n in sizes.items():
        if int(n) < 1:
            raise ValueError(f"shapes: n_{k} must be >= 1, got {n}")
    splits, contexts = {}, {}
    for name, n in sizes.items():
        splits[name], contexts[name] = _make_split(int(n), float(bias), name == "test_ood", image_size,
                                                   seed, SPLIT_IDS[name])
    x = splits["train"].images.double().div_(255.0)
    mean = tuple(round(float(m), 4) for m in x.mean(dim=(0, 2, 3)))
    std = tuple(round(float(s), 4) for s in x.std(dim=(0, 2, 3)))
    del x
    parts = ["shapes", CLASS_NAMES, HIERARCHY]
    for name in sizes:
        sp = splits[name]
        parts += [name, sp.images, sp.labels, sp.masks, contexts[name]]
    options = dict(image_size=image_size, n_train=int(n_train), n_val=int(n_val), n_test=int(n_test),
                   n_test_ood=int(n_test_ood), bias=float(bias), seed=seed)
    return Dataset(
        name="shapes", splits=splits, num_classes=8, class_names=list(CLASS_NAMES),
        fingerprint=fingerprint_tensors(*parts), hierarchy=[[list(g) for g in lvl] for lvl in HIERARCHY],
        mean=mean, std=std, augment={"crop_pad": max(1, image_size // 8), "flip": True},
        image_size=image_size, ood_metric="accuracy", options=options,
        meta={"context": contexts, "paired_context": list(range(8)), "context_names": list(CONTEXT_NAMES),
              "hierarchy_names": [list(COARSE_NAMES), list(FAMILY_NAMES), list(CLASS_NAMES)]},
    )


# labels are a permutation of arange(n) % 8: the smallest class has n // 8 images
TRAIN_CLASS_MIN["shapes"] = lambda o: int(o.get("n_train", 5000)) // 8
