"""CIFAR ShuffleNetV1 / V2 as in RepDistiller (``ShuffleNetv1.py``, ``ShuffleNetv2.py``).

``shufflenetv1``: conv1x1(24)-BN-ReLU stem, 3 stages of 4/8/4 grouped bottlenecks
(groups 3, widths 240/480/960; each stage's first block has stride 2 and concatenates an
avg-pooled shortcut), pool, fc.

``shufflenetv2`` (net size 1): conv1x1(24)-BN-ReLU stem (as RepDistiller's ShuffleNetv2.py,
whose 3x3 stem conv is commented out), 3 stages of a stride-2 DownBlock + 3/7/3
split-transform-concat-shuffle blocks (widths 116/232/464), then conv1x1(1024)-BN-ReLU
(the head's ``pre``), pool, fc.

Both have 3 stages; at 32 px the stage outputs are 16/8/4 px. Stage outputs are the
blocks' final outputs (post-ReLU, and for V2 after the channel shuffle), as
RepDistiller's ``f1..f3``. Init: PyTorch's default, as in the reference implementations.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models.staged import Head, StagedNet


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> [N, c*g, H, W]: interleave the ``groups`` channel groups."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup))


# --------------------------------------------------------------------------- V1
class ShuffleV1Block(nn.Module):
    """gconv1x1-BN-ReLU, shuffle, dw3x3(stride)-BN, gconv1x1-BN; stride 2 concatenates a
    3x3 avg-pooled shortcut, stride 1 adds the input; then ReLU. The block reading the
    24-channel stem uses an ungrouped first conv (as the reference)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.g1 = 1 if in_planes == 24 else groups
        self.conv1 = conv_bn(in_planes, mid, 1, groups=self.g1)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3 = conv_bn(mid, out_planes, 1, groups=groups)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x):
        out = channel_shuffle(F.relu(self.conv1(x)), self.g1)
        out = self.conv3(F.relu(self.conv2(out)))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(StagedNet):
    def __init__(self, num_classes: int = 100, out_planes: Sequence[int] = (240, 480, 960),
                 num_blocks: Sequence[int] = (4, 8, 4), groups: int = 3):
        stem = nn.Sequential(*conv_bn(3, 24, 1), nn.ReLU(inplace=True))
        stages, c = [], 24
        for out, n in zip(out_planes, num_blocks):
            # the stride-2 first block concatenates its c input channels to out - c new ones
            blocks = [ShuffleV1Block(c, out - c, 2, groups)]
            blocks += [ShuffleV1Block(out, out, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c = out
        super().__init__(stem, stages, Head(c, num_classes))
        self._set_stage_channels(out_planes)


# --------------------------------------------------------------------------- V2
class ShuffleV2Block(nn.Module):
    """Split the channels in half; keep one half, transform the other
    (1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU); concatenate; shuffle (groups 2)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.branch = nn.Sequential(*conv_bn(c, c, 1), nn.ReLU(inplace=True), *conv_bn(c, c, 3, groups=c),
                                    *conv_bn(c, c, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 block: left dw3x3(s2)-BN-1x1-BN-ReLU, right 1x1-BN-ReLU-dw3x3(s2)-BN-1x1-BN-ReLU,
    each to out/2 channels; concatenate; shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(*conv_bn(in_channels, in_channels, 3, 2, groups=in_channels),
                                  *conv_bn(in_channels, mid, 1), nn.ReLU(inplace=True))
        self.right = nn.Sequential(*conv_bn(in_channels, mid, 1), nn.ReLU(inplace=True),
                                   *conv_bn(mid, mid, 3, 2, groups=mid),
                                   *conv_bn(mid, mid, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


V2_CONFIGS = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleNetV2(StagedNet):
    def __init__(self, num_classes: int = 100, net_size: float = 1.0):
        if net_size not in V2_CONFIGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(V2_CONFIGS)}, got {net_size}")
        widths, num_blocks = V2_CONFIGS[net_size]
        stem = nn.Sequential(*conv_bn(3, 24, 1), nn.ReLU(inplace=True))
        stages, c = [], 24
        for out, n in zip(widths[:3], num_blocks):
            stages.append(nn.Sequential(ShuffleV2Down(c, out), *[ShuffleV2Block(out) for _ in range(n)]))
            c = out
        pre = nn.Sequential(*conv_bn(c, widths[3], 1), nn.ReLU(inplace=True))
        super().__init__(stem, stages, Head(widths[3], num_classes, pre=pre))
        self._set_stage_channels(widths[:3])


ARCHS = {"shufflenetv1": ShuffleNetV1, "shufflenetv2": ShuffleNetV2}
