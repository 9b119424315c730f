"""ImageNet-style ResNet18/34/50 with a CIFAR stem (RepDistiller ``resnetv2.py``).

The stem is conv3x3(64, stride 1)-BN-ReLU with no max-pool, then 4 stages of widths
64/128/256/512 (x4 for Bottleneck, strides 1/2/2/2): at 32 px the stage outputs are
32/16/8/4 px. Built with the generic :class:`kdbench.models.resnet_cifar.ResNet`, so stage
outputs are post-ReLU exactly as for the CIFAR ResNets. Kaiming init, no zero-init of
the last BN (as RepDistiller's default).
"""
from __future__ import annotations

from functools import partial

from torch import nn

from kdbench.models.resnet_cifar import BasicBlock, ResNet, conv3x3, projection


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1(4x)-BN, plus the (projected) input, ReLU."""

    expansion = 4
    tap_attr = "bn3"  # the residual branch's last BN (StagedNet.tap_modules)

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection(in_planes, out, stride) if stride != 1 or in_planes != out else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


_CONFIGS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def cifar_stem_resnet(block, num_blocks, num_classes: int = 100) -> ResNet:
    return ResNet(block, num_blocks, (64, 128, 256, 512), stem_width=64, num_classes=num_classes)


ARCHS = {name: partial(cifar_stem_resnet, block, blocks) for name, (block, blocks) in _CONFIGS.items()}
