"""Wide ResNets ``wrn_{depth}_{width}`` (Zagoruyko & Komodakis; RepDistiller ``wrn.py``).

Stem conv3x3(16) (no BN: the network is pre-activation), then 3 stages of
``(depth - 4) / 6`` pre-activation blocks of widths 16w/32w/64w (strides 1/2/2), then the
final BN-ReLU, global average pool and fc.

Stage outputs: stages 0 and 1 output the raw residual stream (pre-activation, as
mdistiller's ``feats``; the next block's BN-ReLU is applied inside that block). The
network's **final BN-ReLU is the end of the last stage**, not the head's ``pre``: the last
stage output is then post-ReLU like every ResNet's, and since the head is a plain linear
map of its spatial mean, Grad-CAM on it equals CAM (on the pre-BN residual stream the
BN shift would be lost from the map). Parameter counts are unaffected.

Init as RepDistiller: convs N(0, 2/(k*k*out)), BN 1/0, fc default weight with zero bias.
"""
from __future__ import annotations

import re
from functools import partial

from torch import nn

from kdbench.models.resnet_cifar import conv3x3
from kdbench.models.staged import Head, StagedNet, block_taps, kaiming_init_


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-(dropout)-conv3x3 plus the shortcut. When the shape
    changes, the 1x1 shortcut conv takes the *activated* input (as in the reference)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = conv3x3(out_planes, out_planes)
        self.shortcut = (None if in_planes == out_planes and stride == 1 else
                         nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.drop(self.relu2(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(StagedNet):
    def __init__(self, depth: int, width: int, num_classes: int = 100, drop_rate: float = 0.0):
        if depth < 10 or (depth - 4) % 6 or width < 1:
            raise ValueError(f"WideResNet needs depth = 6n+4 (10, 16, 22, 28, 40, ...) and width >= 1, "
                             f"got depth {depth}, width {width}")
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        stem = conv3x3(3, 16)
        stages, c = [], 16
        for i, w in enumerate(widths):
            blocks = [PreActBlock(c if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1, drop_rate)
                      for j in range(n)]
            if i == len(widths) - 1:  # the network's final BN-ReLU (see module docstring)
                blocks += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*blocks))
            c = w
        super().__init__(stem, stages, Head(c, num_classes))
        self._set_stage_channels(widths)
        kaiming_init_(self, linear_zero_bias=True)

    def tap_modules(self):
        """``conv2`` of the :func:`~kdbench.models.staged.tap_block`-th block of every stage:
        in a pre-activation block the residual branch ends with that conv, so its output is
        the branch before the shortcut addition (the nearest equivalent of a post-activation
        ResNet's ``bn2``; the BN-ReLU that follows belongs to the next block)."""
        return block_taps(self.stages, PreActBlock, "conv2")


WRN_PATTERN = re.compile(r"wrn_(\d+)_(\d+)")


def wrn_from_name(name: str):
    """The factory for ``wrn_{depth}_{width}``, or None when ``name`` is not of that form."""
    m = WRN_PATTERN.fullmatch(name)
    return partial(WideResNet, int(m.group(1)), int(m.group(2))) if m else None


ARCHS = {f"wrn_{d}_{w}": wrn_from_name(f"wrn_{d}_{w}") for d, w in ((16, 1), (16, 2), (40, 1), (40, 2))}
