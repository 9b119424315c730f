"""``shapes``: a procedurally generated diagnostic dataset with known ground truth.

Eight classes in a three-level hierarchy (2 coarse groups -> 4 families -> 8 classes),
built so that a CNN can take the coarse decision from *local* cues, early, and needs a
*large receptive field* for the fine one::

    part (coarse)   family      class = part x arrangement (apex angle)
    solid  block    flat        0 solid-line (180)     1 solid-obtuse (120)
                    tall        2 solid-right (90)     3 solid-equilateral (60)
    hollow block    flat        4 hollow-line          5 hollow-obtuse
                    tall        6 hollow-right         7 hollow-equilateral

Every image shows three small square *parts* (3×3 px at 16 px, 7×7 at 32). The coarse
group is the part: a solid block or a hollow one (its centre left out), visible in one
part, i.e. in a 3×3 patch at 16 px. The class is the arrangement of the three parts: an
apex part and two parts at the same distance D (≈ image size / 4) from it, the class's
apex angle apart. All arrangements share the nearest-neighbour distance D; only the
third distance 2·D·sin(angle/2) (2D, 1.73D, 1.41D, D), i.e. the global shape over about
half the image, tells them apart. The family (flat: 180/120, tall: 90/60) is the
metadata's middle level.

The parts sit on a textured, tinted background *context*. Each class k has a paired
context k (a tint of hue k/8 plus one of eight textures); in ``train``/``val``/``test`` an
image carries its class's context with probability ``bias`` and a uniformly drawn *other*
context otherwise; ``test_ood`` always carries an other context. The per-image context ids
are in ``dataset.meta["context"][split]`` (int64), ``dataset.meta["paired_context"][k] == k``.

Nuisances drawn per image independently of the class: D (0.9-1.1 × size/4), the
rotation of the arrangement (any angle; the parts stay axis-aligned), its position, and
the foreground colour (random hue, saturation 0.3-1, value 0.8-1: always brighter than
the backgrounds, whose value is at most 0.55). Masks are the exact drawn foreground
pixels. Everything is vectorised numpy driven by ``np.random.default_rng((seed, split))``:
the same options give byte-identical tensors on the same platform, and each split is
drawn from its own stream (changing ``n_train`` does not change ``test``).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from kdbench.data.base import (DATASETS, OPTION_TYPES, SEED_OPTION, TRAIN_CLASS_MIN, Dataset, Split,
                               fingerprint_tensors)

#: apex angle of each arrangement: three parts, two of them at distance D from the apex
#: part at this angle (so the third distance, 2·D·sin(angle/2), tells the arrangements apart)
APEX_ANGLES = [180.0, 120.0, 90.0, 60.0]
ARRANGEMENT_NAMES = ["line", "obtuse", "right", "equilateral"]
#: class k is built of part PART_OF_CLASS[k] (= its coarse group: 0 solid, 1 hollow block)
#: in arrangement ARRANGEMENT_OF_CLASS[k]
PART_OF_CLASS = [0, 0, 0, 0, 1, 1, 1, 1]
ARRANGEMENT_OF_CLASS = [0, 1, 2, 3, 0, 1, 2, 3]
COARSE_NAMES = ["solid", "hollow"]
CLASS_NAMES = [f"{COARSE_NAMES[p]}-{ARRANGEMENT_NAMES[a]}" for p, a in zip(PART_OF_CLASS, ARRANGEMENT_OF_CLASS)]
FAMILY_NAMES = ["solid-flat", "solid-tall", "hollow-flat", "hollow-tall"]
HIERARCHY = [
    [[0, 1, 2, 3], [4, 5, 6, 7]],
    [[0, 1], [2, 3], [4, 5], [6, 7]],
    [[k] for k in range(8)],
]
TEXTURE_NAMES = ["h-stripes", "v-stripes", "diagonal", "checker", "dots", "grid", "waves", "grain"]
HUE_NAMES = ["red", "orange", "yellow-green", "green", "cyan", "blue", "violet", "magenta"]
CONTEXT_NAMES = [f"{HUE_NAMES[k]} {TEXTURE_NAMES[k]}" for k in range(8)]
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "test_ood": 3}
#: bumped whenever the same options draw other images; prepared copies of another
#: version are rebuilt (kdbench.data.cache.load_dataset). 2: parts and arrangements
GENERATOR_VERSION = 2


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


def geometry(size: int) -> Tuple[float, int, int, int]:
    """Pixel geometry at ``size``: (mean apex-to-part distance D of an arrangement, part
    half-width, hole half-width, border margin). A part centred on pixel c covers the
    pixels with max(|dx|, |dy|) <= half-width; a hollow part leaves out those with
    max(|dx|, |dy|) < hole."""
    spread = size / 4.0
    half = max(1, (3 * size) // 32)
    hole = (half + 1) // 2
    margin = size // 16
    return spread, half, hole, margin


def part_centres(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pixel centres (n×3×2, x then y, int64) of every image's three parts: an apex part
    and two parts at distance D from it (D = 0.9-1.1 × ``size``/4 at random), the class's
    apex angle (:data:`APEX_ANGLES`) apart; the whole rotated by a random angle, its
    centroid placed at a random point that keeps every part inside the border margin,
    then rounded down to pixels. Every arrangement has the same nearest-neighbour
    distances; only the third distance, the global shape, differs."""
    spread, half, _, margin = geometry(size)
    n = len(labels)
    alpha = np.radians(np.asarray(APEX_ANGLES)[np.asarray(ARRANGEMENT_OF_CLASS)[labels]])  # n
    dist = rng.uniform(0.9, 1.1, n) * spread
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    arms = [theta + alpha / 2, theta - alpha / 2]
    pts = np.stack([np.zeros((n, 2))] + [np.stack([np.cos(a), np.sin(a)], -1) * dist[:, None] for a in arms], 1)
    pts = np.floor(pts - pts.mean(axis=1, keepdims=True))  # n×3×2, centroid at the origin
    lo, hi = pts.min(axis=1), pts.max(axis=1)  # n×2 extent per axis
    first = margin + half - lo  # the smallest centre pixel that keeps the parts inside
    room = np.maximum(size - 1 - margin - half - hi - first, 0) + 1
    centre = first + np.floor(rng.random((n, 2)) * room)
    return (pts + centre[:, None, :]).astype(np.int64)


def _render(labels: np.ndarray, contexts: np.ndarray, size: int, rng: np.random.Generator):
    """Render images (uint8 n×3×H×W) and masks (bool n×H×W) for the given classes/contexts."""
    n = len(labels)
    _, half, hole, _ = geometry(size)
    # per-image, class-independent nuisance parameters (drawn in a fixed order)
    centres = part_centres(labels, size, rng)
    fg = hsv_to_rgb(rng.random(n), rng.uniform(0.3, 1.0, n), rng.uniform(0.8, 1.0, n))  # n×3
    bg_level = rng.uniform(0.3, 0.5, n)  # background brightness scale
    shift = rng.uniform(0, size, (n, 2))  # texture phase
    tints = hsv_to_rgb(np.arange(8) / 8.0, np.full(8, 0.6), np.ones(8))  # 8×3
    hollow = np.asarray(PART_OF_CLASS, dtype=bool)[labels]

    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    pix = np.arange(size, dtype=np.int64)
    grid = pix.astype(np.float32) + 0.5
    period = max(size / 6.0, 3.0)
    chunk = max(1, (1 << 20) // (size * size))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        X = grid[None, None, :]
        Y = grid[None, :, None]
        # Chebyshev distance of every pixel to each part centre: (n, 3, H, W)
        dx = np.abs(pix[None, None, None, :] - centres[s:e, :, 0, None, None])
        dy = np.abs(pix[None, None, :, None] - centres[s:e, :, 1, None, None])
        cheb = np.maximum(dx, dy)
        inner = np.where(hollow[s:e, None, None, None], hole, 0)
        m = ((cheb <= half) & (cheb >= inner)).any(axis=1)
        tex = np.empty((e - s, size, size), np.float32)
        xs = X + shift[s:e, 0, None, None].astype(np.float32)
        ys = Y + shift[s:e, 1, None, None].astype(np.float32)
        ctx = contexts[s:e]
        for k in range(8):
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
    if image_size < 12:
        raise ValueError(f"shapes: image_size must be >= 12 (three parts of 3 px with gaps), got {image_size}")
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
        meta={"generator_version": GENERATOR_VERSION,
              "context": contexts, "paired_context": list(range(8)), "context_names": list(CONTEXT_NAMES),
              "hierarchy_names": [list(COARSE_NAMES), list(FAMILY_NAMES), list(CLASS_NAMES)]},
        source=f"generated by kdbench (kdbench.data.shapes, generator version {GENERATOR_VERSION})",
    )


shapes.generator_version = GENERATOR_VERSION

# labels are a permutation of arange(n) % 8: the smallest class has n // 8 images
TRAIN_CLASS_MIN["shapes"] = lambda o: int(o.get("n_train", 5000)) // 8
_N_IMAGES = {"type": "integer", "minimum": 1, "maximum": 100_000}  # 100k 64-px images: 1.2 GB per split
OPTION_TYPES["shapes"] = {"image_size": {"type": "integer", "minimum": 12, "maximum": 64},
                          "n_train": _N_IMAGES, "n_val": _N_IMAGES, "n_test": _N_IMAGES, "n_test_ood": _N_IMAGES,
                          "bias": {"type": "number", "minimum": 0, "maximum": 1}, "seed": SEED_OPTION}
