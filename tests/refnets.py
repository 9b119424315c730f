"""The reference CIFAR networks' module layout, written for the tests from RepDistiller's
model code (github:HobbitLong/RepDistiller models/resnet.py, resnetv2.py, wrn.py, vgg.py,
mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py; mdistiller's mdistiller/models/cifar/
copies use the same attribute names). Independent of kdbench's zoo: the attribute names,
module nesting and forward passes are the reference's, so ``state_dict()`` has exactly
the keys and shapes of a RepDistiller / mdistiller checkpoint's ``'model'`` entry, and
the logits are what the reference computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(i, o, k, s=1, g=1, bias=False):
    return nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=bias)


# --------------------------------------------------------------------- resnet.py (CIFAR)
class RBasic(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet(nn.Module):
    def __init__(self, depth, num_filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1, self.bn1 = _conv(3, num_filters[0], 3), nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, 2)
        self.layer3 = self._make_layer(num_filters[3], n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3], num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [RBasic(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [RBasic(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


# --------------------------------------------------------------------- resnetv2.py (ResNet50)
class V2Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _conv(in_planes, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class RefResNetV2(nn.Module):
    def __init__(self, num_blocks, num_classes):
        super().__init__()
        self.in_planes = 64
        self.conv1, self.bn1 = _conv(3, 64, 3), nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(2048, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(V2Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * 4
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


# --------------------------------------------------------------------- wrn.py
class WBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True)
        self.conv1 = _conv(in_planes, out_planes, 3, stride)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_planes), nn.ReLU(inplace=True)
        self.conv2 = _conv(out_planes, out_planes, 3)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return (x if self.equalInOut else self.convShortcut(x)) + out


class WNetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WBlock(in_planes if i == 0 else out_planes, out_planes,
                                            stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = _conv(3, 16, 3)
        self.block1 = WNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = WNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = WNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(self.relu(self.bn1(out)), 8).flatten(1))


# --------------------------------------------------------------------- vgg.py (batch_norm=True)
VGG_CFG = {8: [[64], [128], [256], [512], [512]],
           13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


class RefVGG(nn.Module):
    def __init__(self, depth, num_classes):
        super().__init__()
        cfg = VGG_CFG[depth]
        ins = [3] + [c[-1] for c in cfg[:-1]]
        for b in range(5):
            setattr(self, f"block{b}", self._make_layers(cfg[b], ins[b]))
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

    @staticmethod
    def _make_layers(cfg, in_channels):
        layers = []
        for v in cfg:
            layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
        return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward

    def forward(self, x):
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


# --------------------------------------------------------------------- mobilenetv2.py (mobile_half)
class MInvRes(nn.Module):
    def __init__(self, inp, oup, stride, t):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        h = inp * t
        self.conv = nn.Sequential(nn.Conv2d(inp, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                                  nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                  nn.ReLU(inplace=True), nn.Conv2d(h, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    def __init__(self, num_classes, T=6, width_mult=0.5):
        super().__init__()
        setting = [[1, 16, 1, 1], [T, 24, 2, 1], [T, 32, 3, 2], [T, 64, 4, 2], [T, 96, 3, 1],
                   [T, 160, 3, 2], [T, 320, 1, 1]]
        c = int(32 * width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([])
        for t, ch, n, s in setting:
            out, layers = int(ch * width_mult), []
            for stride in [s] + [1] * (n - 1):
                layers.append(MInvRes(c, out, stride, t))
                c = out
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = nn.Sequential(nn.Conv2d(c, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x):
        out = self.conv1(x)
        for b in self.blocks:
            out = b(out)
        return self.classifier(self.avgpool(self.conv2(out)).flatten(1))


# --------------------------------------------------------------------- ShuffleNetv1.py / v2.py
def shuffle(x, g):
    n, c, h, w = x.size()
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class S1Bottleneck(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups):
        super().__init__()
        self.stride, mid = stride, int(out_planes / 4)
        self.g = 1 if in_planes == 24 else groups
        self.conv1, self.bn1 = _conv(in_planes, mid, 1, g=self.g), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = _conv(mid, mid, 3, stride, g=mid), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _conv(mid, out_planes, 1, g=groups), nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x):
        out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class RefShuffleV1(nn.Module):
    def __init__(self, num_classes, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), nn.BatchNorm2d(24)
        self.in_planes = 24
        for i in range(3):
            layers = []
            for j in range(num_blocks[i]):
                cat = self.in_planes if j == 0 else 0
                layers.append(S1Bottleneck(self.in_planes, out_planes[i] - cat, 2 if j == 0 else 1, groups))
                self.in_planes = out_planes[i]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class S2Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        c //= 2
        self.conv1, self.bn1 = _conv(c, c, 1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = _conv(c, c, 3, g=c), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = _conv(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        c = int(x.size(1) * 0.5)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2))))))))
        return shuffle(torch.cat([x1, out], 1), 2)


class S2Down(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        m = o // 2
        self.conv1, self.bn1 = _conv(i, i, 3, 2, g=i), nn.BatchNorm2d(i)
        self.conv2, self.bn2 = _conv(i, m, 1), nn.BatchNorm2d(m)
        self.conv3, self.bn3 = _conv(i, m, 1), nn.BatchNorm2d(m)
        self.conv4, self.bn4 = _conv(m, m, 3, 2, g=m), nn.BatchNorm2d(m)
        self.conv5, self.bn5 = _conv(m, m, 1), nn.BatchNorm2d(m)

    def forward(self, x):
        out1 = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        out2 = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return shuffle(torch.cat([out1, out2], 1), 2)


class RefShuffleV2(nn.Module):
    def __init__(self, num_classes, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), nn.BatchNorm2d(24)  # 1x1 (the 3x3 is commented out)
        c = 24
        for i in range(3):
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(S2Down(c, out_channels[i]), *[S2Basic(out_channels[i]) for _ in range(num_blocks[i])]))
            c = out_channels[i]
        self.conv2, self.bn2 = _conv(c, out_channels[3], 1), nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


#: kdbench arch -> (RepDistiller model_dict name, builder(num_classes))
REFERENCE = {
    "resnet56": ("resnet56", lambda k: RefResNet(56, [16, 16, 32, 64], k)),
    "resnet110": ("resnet110", lambda k: RefResNet(110, [16, 16, 32, 64], k)),
    "resnet20": ("resnet20", lambda k: RefResNet(20, [16, 16, 32, 64], k)),
    "resnet32x4": ("resnet32x4", lambda k: RefResNet(32, [32, 64, 128, 256], k)),
    "resnet8x4": ("resnet8x4", lambda k: RefResNet(8, [32, 64, 128, 256], k)),
    "resnet50": ("ResNet50", lambda k: RefResNetV2([3, 4, 6, 3], k)),
    "wrn_40_2": ("wrn_40_2", lambda k: RefWRN(40, 2, k)),
    "wrn_16_2": ("wrn_16_2", lambda k: RefWRN(16, 2, k)),
    "vgg13": ("vgg13", lambda k: RefVGG(13, k)),
    "vgg8": ("vgg8", lambda k: RefVGG(8, k)),
    "mobilenetv2": ("MobileNetV2", lambda k: RefMobileNetV2(k)),
    "shufflenetv1": ("ShuffleV1", lambda k: RefShuffleV1(k)),
    "shufflenetv2": ("ShuffleV2", lambda k: RefShuffleV2(k)),
}


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct values in every parameter and buffer (BN statistics included, running_var
    positive), so that a misplaced tensor changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or t.ndim == 1:
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g) if "weight" in name
                        else 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = max(1, t[0].numel())
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model
