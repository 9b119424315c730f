"""The strong augmentation of MLKD's second view, batched on uint8-valued tensors.

MLKD (Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/dataset/cifar100.py``,
``get_cifar100_train_transform_strong``) draws its strong view as RandomCrop + flip (drawn
independently of the weak view's) followed by FixMatch's ``RandAugment(2, 10)``: two ops
drawn with replacement from 14, each with a magnitude uniform in its range, then Cutout
of a square of side U(0, 0.5)·W at a uniform centre, filled with (125, 123, 114). The
reference runs PIL per image; here every op acts on a whole batch at once (rows that drew
the op), on float tensors holding 0..255 values, each op's result floored and clipped to
0..255 as PIL's uint8 output. Geometric ops (rotate, shear, translate) sample the nearest
pixel with zero fill, as PIL's defaults.

All randomness is drawn up front, per epoch, by :func:`draw_strong_params` from a generator
of its own, so the weak view's random stream is untouched.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

#: (name, low, high): the 14 ops of the reference's ``augment_list`` and their ranges
OPS = (
    ("autocontrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95), ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0), ("rotate", -30.0, 30.0), ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3),
)
NUM_OPS = 2
CUTOUT_MAX = 0.5
CUTOUT_FILL = (125.0, 123.0, 114.0)


def draw_strong_params(n: int, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """The per-image random choices of one epoch (n images), in a fixed order."""
    ops = torch.randint(0, len(OPS), (n, NUM_OPS), generator=g)
    u = torch.rand(n, NUM_OPS, generator=g)
    lo = torch.tensor([o[1] for o in OPS])[ops]
    hi = torch.tensor([o[2] for o in OPS])[ops]
    return {"ops": ops, "mags": lo + (hi - lo) * u, "cutout": torch.rand(n, generator=g) * CUTOUT_MAX,
            "cutout_xy": torch.rand(n, 2, generator=g)}


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.floor().clamp_(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's "L" conversion (ITU-R 601-2 luma), B×1×H×W, as Pillow computes it: the
    weights in 16-bit fixed point, rounded (``Convert.c`` ``L24``: (19595·R + 38470·G +
    7471·B + 2¹⁵) >> 16), not the documented R·299/1000 + ... truncated."""
    if x.shape[1] != 3:
        return x[:, :1]
    r, g, b = (x[:, k:k + 1].double() for k in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).floor().to(x.dtype)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _u8(degenerate + v.view(-1, 1, 1, 1) * (x - degenerate))


def _autocontrast(x, v):
    # PIL's lut: int(i·scale + offset), scale = 255/(hi − lo), offset = −lo·scale (doubles)
    xd = x.double()
    lo = xd.amin(dim=(2, 3), keepdim=True)
    hi = xd.amax(dim=(2, 3), keepdim=True)
    ok = hi > lo
    scale = 255.0 / torch.where(ok, hi - lo, torch.ones_like(hi))
    out = (xd * scale + (-lo * scale)).floor().clamp_(0, 255)
    return torch.where(ok, out, xd).to(x.dtype)


def _equalize(x, v):
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = hist.gather(1, flat.amax(dim=1, keepdim=True))  # count of the largest value present
    step = (h * w - last) // 255
    before = hist.cumsum(dim=1) - hist  # pixels strictly below each value
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = ((before + step // 2) // safe).clamp_(max=255)
    out = lut.gather(1, flat).to(x.dtype).reshape(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), out, x)


def _posterize(x, v):
    bits = v.long().clamp(min=1, max=8)
    keep = (255 - ((1 << (8 - bits)) - 1)).view(-1, 1, 1, 1)
    return (x.long() & keep).to(x.dtype)


def _sharpness(x, v):
    c = x.shape[1]
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    smooth = _u8(F.conv2d(x, k, groups=c) + 0.5)  # PIL's SMOOTH filter (rounded), interior only
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, v)


def _solarize(x, v):
    return torch.where(x < v.view(-1, 1, 1, 1), x, 255.0 - x)


def _affine(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE)`` with nearest sampling and zero fill: output pixel
    (x, y) takes the input pixel at floor(M·(x + ½, y + ½, 1)). ``m``: B×2×3."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
    m = m.to(x.dtype)
    sx = m[:, 0, 0, None, None] * xs + m[:, 0, 1, None, None] * ys + m[:, 0, 2, None, None]
    sy = m[:, 1, 0, None, None] * xs + m[:, 1, 1, None, None] * ys + m[:, 1, 2, None, None]
    ix, iy = sx.floor().long(), sy.floor().long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)
    return out * inside[:, None].to(x.dtype)


def _geometric(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    m = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    v = v.double()
    if name == "shear_x":
        m[:, 0, 1] = v
    elif name == "shear_y":
        m[:, 1, 0] = v
    elif name == "translate_x":
        m[:, 0, 2] = v * w
    elif name == "translate_y":
        m[:, 1, 2] = v * h
    elif name == "rotate":  # PIL Image.rotate(v): counter-clockwise about the centre
        a = -v * math.pi / 180.0
        cx, cy = w / 2.0, h / 2.0
        cos, sin = torch.cos(a), torch.sin(a)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, sin, -sin, cos
        m[:, 0, 2] = cx - cos * cx - sin * cy
        m[:, 1, 2] = cy + sin * cx - cos * cy
    return _affine(x, m)


def _apply(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if name == "identity":
        return x
    if name == "autocontrast":
        return _autocontrast(x, v)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, v)
    if name == "color":
        return _blend(_gray(x).expand_as(x), x, v)
    if name == "contrast":
        mean = (_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()
        return _blend(mean.expand_as(x), x, v)
    if name == "equalize":
        return _equalize(x, v)
    if name == "posterize":
        return _posterize(x, v)
    if name == "sharpness":
        return _sharpness(x, v)
    if name == "solarize":
        return _solarize(x, v)
    return _geometric(name, x, v)


def _cutout(x: torch.Tensor, frac: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    side = frac.to(torch.float64) * w
    x0 = (xy[:, 0].double() * w - side / 2).clamp(min=0).floor()
    y0 = (xy[:, 1].double() * h - side / 2).clamp(min=0).floor()
    x1 = torch.minimum(x0 + side, torch.full_like(x0, w))
    y1 = torch.minimum(y0 + side, torch.full_like(y0, h))
    cols = torch.arange(w, device=x.device, dtype=torch.float64)
    rows = torch.arange(h, device=x.device, dtype=torch.float64)
    # ImageDraw.rectangle fills both end points; Cutout(v <= 0) leaves the image alone
    in_x = (cols[None] >= x0[:, None]) & (cols[None] <= x1[:, None])
    in_y = (rows[None] >= y0[:, None]) & (rows[None] <= y1[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :] & (frac > 0).view(-1, 1, 1))[:, None]
    fill = torch.tensor(CUTOUT_FILL[:c] if c <= 3 else CUTOUT_FILL[:1] * c, dtype=x.dtype, device=x.device)
    return torch.where(box, fill.view(1, c, 1, 1), x)


def strong_augment(x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """RandAugment(2, ·) + Cutout on a batch ``x`` (B×C×H×W, values 0..255, any float or
    integer dtype) with this batch's rows of :func:`draw_strong_params`. Returns float32."""
    x = x.to(torch.float32)
    ops, mags = params["ops"].to(x.device), params["mags"].to(x.device)
    for k in range(ops.shape[1]):
        for op_id in torch.unique(ops[:, k]).tolist():
            rows = torch.nonzero(ops[:, k] == op_id).flatten()
            x[rows] = _apply(OPS[op_id][0], x[rows], mags[rows, k])
    return _cutout(x, params["cutout"].to(x.device), params["cutout_xy"].to(x.device))
