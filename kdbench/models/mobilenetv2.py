"""CIFAR MobileNetV2 as in RepDistiller (``mobilenetv2.py``; ``mobilenetv2`` = their
``mobile_half``: expansion 6, width multiplier 0.5, ~0.81M parameters at 100 classes).

conv3x3(stride 2)-BN-ReLU, then the 7 inverted-residual settings (t, c, n, s) with
RepDistiller's CIFAR strides 1,1,2,2,1,2,1, then conv1x1(1280)-BN-ReLU, pool, fc.

StagedNet split (as mdistiller's ``feats``): ``stem`` = the first conv; a new stage starts
at every stride-2 setting, giving 4 stages = settings [0,1], [2], [3,4], [5,6] (at 32 px:
16/8/4/2 px, 12/16/48/160 channels at width 0.5). Stage outputs are the last inverted
residual's linear (no ReLU) output, as in MobileNetV2 itself. The final
conv1x1(1280)-BN-ReLU is the head's ``pre``, so the embedding is 1280-d.

Init as RepDistiller: convs N(0, 2/(k*k*out)), BN 1/0, fc N(0, 0.01) with zero bias.
"""
from __future__ import annotations

import math
from functools import partial

from torch import nn

from kdbench.models.staged import Head, StagedNet, kaiming_init_

# (expansion t, channels c, repeats n, first stride s); t=None means "the model's t"
SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]


def conv_bn_relu(inp: int, oup: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """pw-expand (always present, as in the reference) - dw3x3 - pw-linear, residual when
    stride 1 and the shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(StagedNet):
    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expand_ratio: int = 6,
                 last_channel: int = 1280):
        c = int(32 * width_mult)
        stem = conv_bn_relu(3, c, 3, stride=2)
        groups: list[list[nn.Module]] = []
        channels: list[int] = []
        for i, (t, ch, n, s) in enumerate(SETTINGS):
            out = int(ch * width_mult)
            layers = [InvertedResidual(c if j == 0 else out, out, s if j == 0 else 1,
                                       expand_ratio if t is None else t) for j in range(n)]
            if i == 0 or s == 2:  # a stride-2 setting starts a new stage
                groups.append([])
                channels.append(0)
            groups[-1].append(nn.Sequential(*layers))
            channels[-1] = c = out  # a stage's channels: its last setting's
        stages = [nn.Sequential(*g) for g in groups]
        if width_mult > 1.0:  # RepDistiller: make_divisible(1280 * w, 8) above width 1
            last_channel = int(math.ceil(last_channel * width_mult / 8) * 8)
        head = Head(last_channel, num_classes, pre=conv_bn_relu(c, last_channel, 1))
        super().__init__(stem, stages, head)
        self._set_stage_channels(channels)
        kaiming_init_(self, linear_std=0.01)


ARCHS = {"mobilenetv2": partial(MobileNetV2, width_mult=0.5, expand_ratio=6)}
