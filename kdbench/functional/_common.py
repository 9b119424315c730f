"""Helpers shared by :mod:`kdbench.functional.losses` and :mod:`kdbench.functional.metrics`."""
from __future__ import annotations

import torch
from torch import Tensor


# --------------------------------------------------------------------------- helpers
def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den != 0, else 0; no NaN in the value or in the gradient."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _as_index(classes, n: int, device) -> Tensor:
    idx = torch.as_tensor(classes, device=device).long().reshape(-1)
    if idx.numel() != n:
        raise ValueError(f"expected {n} class indices (one per sample), got {idx.numel()}")
    return idx
