"""CIFAR ResNets as in the KD literature (RepDistiller ``resnet.py``, mdistiller).

``resnet{8,14,20,32,44,56,110}``: a conv3x3(16)-BN-ReLU stem, then 3 stages of
``(depth - 2) / 6`` BasicBlocks of widths 16/32/64 (strides 1/2/2), global average
pool, fc. ``resnet8x4`` / ``resnet32x4``: stem width 32, stage widths 64/128/256.

Stage outputs are **post-ReLU**: stage k's output is its last block's output after the
block's final ReLU (mdistiller's ``feats``, not ``preact_feats``). The last stage's
output is therefore non-negative and the head is a plain linear map of its spatial
mean, so Grad-CAM on it equals CAM.

The generic :class:`ResNet` here (conv3x3 stem, no max-pool, stages of blocks) also
builds the CIFAR-stem ResNet18/34/50 in :mod:`kdbench.models.resnet_imagenet`.
Initialisation: Kaiming-normal convs (fan_out), BN 1/0, default Linear (as RepDistiller).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence, Type

from torch import nn

from kdbench.models.staged import Head, StagedNet, block_taps, kaiming_init_


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The 1x1 conv + BN shortcut used when the shape changes (ResNet option B)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    expansion = 1
    tap_attr = "bn2"  # the residual branch's last BN (StagedNet.tap_modules)

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        out = planes * self.expansion
        self.shortcut = projection(in_planes, out, stride) if stride != 1 or in_planes != out else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


def make_stage(block: Type[nn.Module], in_planes: int, planes: int, num_blocks: int,
               stride: int) -> nn.Sequential:
    """``num_blocks`` blocks, the first one with ``stride`` (and the projection)."""
    layers = []
    for i in range(num_blocks):
        layers.append(block(in_planes, planes, stride if i == 0 else 1))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers)


class ResNet(StagedNet):
    """conv3x3(stem_width)-BN-ReLU stem (stride 1, no max-pool), one stage per entry of
    ``widths`` (stride 1 for the first, 2 for the others), global average pool, fc."""

    def __init__(self, block: Type[nn.Module], num_blocks: Sequence[int], widths: Sequence[int],
                 stem_width: int, num_classes: int = 100):
        if len(num_blocks) != len(widths):
            raise ValueError(f"num_blocks {list(num_blocks)} and widths {list(widths)} differ in length")
        stem = nn.Sequential(conv3x3(3, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        stages, c = [], stem_width
        for i, (n, w) in enumerate(zip(num_blocks, widths)):
            stages.append(make_stage(block, c, w, n, stride=1 if i == 0 else 2))
            c = w * block.expansion
        super().__init__(stem, stages, Head(c, num_classes))
        self._set_stage_channels([w * block.expansion for w in widths])
        self._block_type = block
        kaiming_init_(self)

    def tap_modules(self):
        """The last BN of the residual branch (``bn2``; ``bn3`` in a Bottleneck) of the
        :func:`~kdbench.models.staged.tap_block`-th block of every stage: its output is the
        pre-activation branch output, before the shortcut addition and ReLU (KamalEngine's
        ``layer*.2.bn2`` for resnet56)."""
        return block_taps(self.stages, self._block_type, self._block_type.tap_attr)


def cifar_resnet(depth: int, num_classes: int = 100, width: int = 1) -> ResNet:
    """RepDistiller's ``resnet{depth}`` (``width=4``: ``resnet{depth}x4``, stem 32)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    stem = 16 if width == 1 else 8 * width
    return ResNet(BasicBlock, [n, n, n], widths, stem_width=stem, num_classes=num_classes)


ARCHS = {f"resnet{d}": partial(cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)}
ARCHS.update({f"resnet{d}x4": partial(cifar_resnet, d, width=4) for d in (8, 32)})
