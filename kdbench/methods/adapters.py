"""Shared building blocks of feature-based methods: stage alignment and conv bridges."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from kdbench.errors import KDBenchError


def stage_pairs(n_student: int, n_teacher: int) -> List[Tuple[int, int]]:
    """(student stage, teacher stage) at the same relative depth, one per student stage:
    student stage i (of n_s) meets teacher stage round((i + 1) * n_t / n_s) - 1."""
    return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]


def resample_kind(src: Sequence[int], dst: Sequence[int]) -> str:
    """How a C×H×W feature reaches another side's C'×H'×W': ``same`` size, ``down`` (the
    source is 2× larger: stride-2 conv) or ``up`` (2× smaller: transposed conv); anything
    else is an error naming both shapes."""
    (c_in, h_in, w_in), (c_out, h_out, w_out) = tuple(src), tuple(dst)
    if (h_in, w_in) == (h_out, w_out):
        return "same"
    if (h_in, w_in) == (2 * h_out, 2 * w_out):
        return "down"
    if (2 * h_in, 2 * w_in) == (h_out, w_out):
        return "up"
    raise KDBenchError(
        f"cannot bridge a {c_in}×{h_in}×{w_in} feature to {c_out}×{h_out}×{w_out}: "
        "spatial sizes must be equal or 2× apart")


def conv_bridge(src: Sequence[int], dst: Sequence[int], *, resample_bias: bool = False,
                leaky_slope: float | None = None) -> nn.Module:
    """3×3 conv + BN mapping a C×H×W feature onto another side's C'×H'×W': stride 2 when
    the source is 2× larger, a 4/2/1 transposed conv when it is 2× smaller.

    ``resample_bias``: the stride-2 and transposed convs carry a bias (the same-size conv
    never does). ``leaky_slope``: end with LeakyReLU(slope). Both off by default (fitnet's
    regressor); FCFD's bridges (:func:`fcfd_bridge`) turn them on as its reference does."""
    c_in, c_out = int(src[0]), int(dst[0])
    kind = resample_kind(src, dst)
    if kind == "same":
        conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)
    elif kind == "down":
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=resample_bias)
    else:
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=resample_bias)
    layers = [conv, nn.BatchNorm2d(c_out)]
    if leaky_slope is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky_slope))
    return nn.Sequential(*layers)


#: FCFD's bridges into an after-ReLU feature end with LeakyReLU of this slope
#: (LiuDongyang6/FCFD classification/models/meta.py ``build_bridge``)
FCFD_LEAKY_SLOPE = 0.1


def fcfd_bridge(src: Sequence[int], dst: Sequence[int], into_after_relu: bool) -> nn.Module:
    """A bridge as FCFD's reference builds it (``MetaModel.build_bridge``): 3×3 conv
    (bias-free at equal size; stride-2 or transposed 4/2/1 conv *with* bias otherwise) +
    BN, then LeakyReLU(0.1) when the target feature is an after-ReLU one. Initialised as
    the reference: Conv2d weights Kaiming-normal (fan_out, ReLU gain), BN weight 1 / bias
    0; a transposed conv and the conv biases keep PyTorch's default."""
    bridge = conv_bridge(src, dst, resample_bias=True, leaky_slope=FCFD_LEAKY_SLOPE if into_after_relu else None)
    for m in bridge.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return bridge


@torch.no_grad()
def after_relu_stages(model: nn.Module, input_size: int, in_chans: int = 3) -> List[bool]:
    """For every stage of a StagedNet: is its output an after-ReLU feature (never
    negative)? Decided on one eval-mode forward of a fixed random batch (its own
    generator: the global RNG is untouched, no state changes). A pre-activation output
    (BN, a linear bottleneck, a residual sum) has negative entries on such a batch; a
    ReLU / ReLU6 output never does."""
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, in_chans, input_size, input_size, generator=gen).to(dev)
        feats = model.forward_features(x)
    finally:
        model.train(was)
    return [bool((f >= 0).all()) for f in feats.stages]
