"""Shared building blocks of feature-based methods: stage alignment and conv bridges."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import nn

from kdbench.errors import KDBenchError


def stage_pairs(n_student: int, n_teacher: int) -> List[Tuple[int, int]]:
    """(student stage, teacher stage) at the same relative depth, one per student stage:
    student stage i (of n_s) meets teacher stage round((i + 1) * n_t / n_s) - 1."""
    return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]


def conv_bridge(src: Sequence[int], dst: Sequence[int]) -> nn.Module:
    """3×3 conv + BN mapping a C×H×W feature onto another side's C'×H'×W': stride 2 when
    the source is 2× larger, a 4/2/1 transposed conv when it is 2× smaller."""
    c_in, h_in, w_in = src
    c_out, h_out, w_out = dst
    if (h_in, w_in) == (h_out, w_out):
        conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)
    elif (h_in, w_in) == (2 * h_out, 2 * w_out):
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
    elif (2 * h_in, 2 * w_in) == (h_out, w_out):
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
    else:
        raise KDBenchError(
            f"cannot bridge a {c_in}×{h_in}×{w_in} feature to {c_out}×{h_out}×{w_out}: "
            "spatial sizes must be equal or 2× apart")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))
