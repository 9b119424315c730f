"""CIFAR VGG with BatchNorm (RepDistiller ``vgg.py``): ``vgg8, vgg11, vgg13, vgg16, vgg19``.

Five conv blocks (conv3x3 with bias - BN - ReLU, widths from ``CONFIGS``); 2x2 max-pools
between blocks 0/1, 1/2 and 2/3; global average pool; ``Linear(512, num_classes)``.

StagedNet split: ``stem`` = block 0 (full resolution, 64 ch); the 4 ``stages`` are
[pool, block k] for k = 1..4, so at 32 px the stage outputs are 16/8/4/4 px with
128/256/512/512 channels. Stage outputs are post-ReLU (RepDistiller's ``f1..f4``).
RepDistiller adds a max-pool before block 4 only for 64-px inputs; here the pool before
block 4 applies when the map is at least 8 px, which is the same rule for 32- and
64-px inputs (the final map is 4x4 for both).

Init as RepDistiller: convs N(0, 2/(k*k*out)) with zero bias, BN 1/0, fc N(0, 0.01).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch.nn.functional as F
from torch import nn

from kdbench.models.staged import Head, StagedNet, kaiming_init_

CONFIGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class PoolIfLarge(nn.Module):
    """2x2 max-pool when the feature map is at least ``min_size`` px, else identity."""

    def __init__(self, min_size: int = 8):
        super().__init__()
        self.min_size = min_size

    def forward(self, x):
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= self.min_size else x

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}"


def conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers)


class VGG(StagedNet):
    def __init__(self, depth: int, num_classes: int = 100):
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        cfg = CONFIGS[depth]
        stem = conv_block(3, cfg[0])
        stages = []
        for k in range(1, 5):
            pool = nn.MaxPool2d(2, 2) if k < 4 else PoolIfLarge(8)
            stages.append(nn.Sequential(pool, conv_block(cfg[k - 1][-1], cfg[k])))
        super().__init__(stem, stages, Head(cfg[4][-1], num_classes))
        self._set_stage_channels([c[-1] for c in cfg[1:]])
        kaiming_init_(self, linear_std=0.01)


ARCHS = {f"vgg{d}": partial(VGG, d) for d in CONFIGS}
