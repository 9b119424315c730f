"""timm models as StagedNets: ``create_model("timm:<name>", num_classes)``.

The timm model is built with ``timm.create_model(name, pretrained=False, num_classes=...)``
and its own modules are re-used (re-parented, never copied) as stem / stages / head.
timm is imported only here, and only when a ``timm:`` model is requested.

How each supported family is split (``feature_info`` decides the stage boundaries; its
reduction-2 entry, if any, ends the stem and every later entry ends a stage):

- ``resnet`` (timm ``ResNet``: resnet18/34/50/..., resnet*d, seresnet*, resnext*, ...):
  stem = conv1, bn1, act1, maxpool; stages = layer1..layer4; head = global_pool -> fc.
- ``efficientnet`` (timm ``EfficientNet``: efficientnet_*, tf_efficientnet_*, mnasnet_*,
  mobilenetv2_* ...): stem = conv_stem, bn1 and the stride-2 ``blocks`` (blocks[0] for b0);
  stages = ``blocks`` grouped at the feature_info points (b0: [1], [2], [3,4], [5,6]);
  head.pre = conv_head, bn2 (the 1x1 conv to 1280 + BN-act); head = global_pool -> classifier.
- ``mobilenetv3`` (timm ``MobileNetV3``: mobilenetv3_*, lcnet_*, mobilenetv4_* ...):
  stem = conv_stem, bn1 (+ any stride-2 blocks); stages = ``blocks`` grouped at the
  feature_info points (the last stage ends with timm's final 1x1 ConvBnAct block);
  head = :class:`TimmHead` whose ``embed`` is global_pool -> conv_head -> norm_head -> act2
  -> flatten (MobileNetV3 pools *before* its head conv), ``fc`` = classifier.
- ``convnext`` (timm ``ConvNeXt``): stem = stem; stages = stages[0..3]; head.pre = norm_pre;
  ``embed`` = head.global_pool -> head.norm (LayerNorm on the pooled map) -> flatten;
  ``fc`` = head.fc.

A timm ``drop_rate`` > 0 becomes a dropout at the end of ``embed`` (timm applies it just
before the classifier), so in training mode the embedding is the dropped-out one.
"""
from __future__ import annotations

import difflib
import importlib
import re
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from kdbench.errors import KDBenchError
from kdbench.models.staged import Head, StagedNet

FAMILIES: Dict[str, str] = {
    "resnet": "resnet (e.g. timm:resnet18, timm:resnet50)",
    "mobilenetv3": "mobilenetv3 (e.g. timm:mobilenetv3_small_050, timm:mobilenetv3_large_100)",
    "efficientnet": "efficientnet (e.g. timm:efficientnet_b0)",
    "convnext": "convnext (e.g. timm:convnext_atto)",
}
SUPPORTED = "; ".join(FAMILIES.values())


class TimmArchError(KDBenchError, ValueError):
    """A ``timm:`` name that timm does not know, or whose architecture cannot be split."""


class TimmHead(Head):
    """pre -> pool -> post -> flatten -> dropout -> fc, built from timm's own modules."""

    def __init__(self, fc: nn.Module, pool: nn.Module, pre: nn.Module | None = None,
                 post: nn.Module | None = None, drop: nn.Module | float = 0.0):
        nn.Module.__init__(self)  # Head.__init__ would build a fresh pool and fc
        if not isinstance(fc, nn.Linear):
            raise TimmArchError(f"the timm classifier is {type(fc).__name__}, not nn.Linear "
                                f"(num_classes must be > 0)")
        self.pre = pre if pre is not None else nn.Identity()
        self.pool = pool
        self.post = post if post is not None else nn.Identity()
        self.drop = drop if isinstance(drop, nn.Module) else (nn.Dropout(drop) if drop else nn.Identity())
        self.fc = fc

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post(self.pool(self.pre(x)))
        return self.drop(torch.flatten(x, 1))


Split = Tuple[nn.Module, List[nn.Module], TimmHead, List[int]]


def _seq(*mods: nn.Module) -> nn.Module:
    mods = tuple(m for m in mods if not isinstance(m, nn.Identity))
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _feature_points(model: nn.Module) -> List[dict]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise TimmArchError(f"timm model {type(model).__name__} has no feature_info to split it by")
    return [dict(d) for d in info]


def _split_resnet(m: nn.Module) -> Split:
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    chans = [d["num_chs"] for d in _feature_points(m) if d["module"].startswith("layer")]
    return stem, stages, TimmHead(m.fc, m.global_pool, drop=float(m.drop_rate or 0.0)), chans


def _split_blocks(m: nn.Module) -> Tuple[nn.Module, List[nn.Module], List[int]]:
    """conv_stem/bn1 + ``blocks`` (EfficientNet, MobileNetV3), grouped by feature_info."""
    stem_end, ends, chans = -1, [], []
    for d in _feature_points(m):
        hit = re.fullmatch(r"blocks\.(\d+)", d["module"])
        idx = int(hit.group(1)) if hit else -1  # conv_stem / bn1: inside the stem
        if d["reduction"] <= 2:
            stem_end = max(stem_end, idx)
        else:
            ends.append(idx)
            chans.append(d["num_chs"])
    blocks = list(m.blocks)
    if not ends or ends[-1] != len(blocks) - 1 or ends != sorted(set(ends)) or ends[0] <= stem_end:
        raise TimmArchError(f"unexpected feature_info layout for {type(m).__name__}: {m.feature_info}")
    stem = nn.Sequential(m.conv_stem, m.bn1, *blocks[: stem_end + 1])
    starts = [stem_end + 1] + [e + 1 for e in ends[:-1]]
    stages = [_seq(*blocks[a: b + 1]) for a, b in zip(starts, ends)]
    return stem, stages, chans


def _split_efficientnet(m: nn.Module) -> Split:
    stem, stages, chans = _split_blocks(m)
    head = TimmHead(m.classifier, m.global_pool, pre=_seq(m.conv_head, m.bn2), drop=float(m.drop_rate or 0.0))
    return stem, stages, head, chans


def _split_mobilenetv3(m: nn.Module) -> Split:
    stem, stages, chans = _split_blocks(m)
    post = _seq(m.conv_head, m.norm_head, m.act2, m.flatten)
    return stem, stages, TimmHead(m.classifier, m.global_pool, post=post, drop=float(m.drop_rate or 0.0)), chans


def _split_convnext(m: nn.Module) -> Split:
    h = m.head
    post = _seq(*[getattr(h, n) for n in ("norm", "flatten", "pre_logits") if hasattr(h, n)])
    head = TimmHead(h.fc, h.global_pool, pre=m.norm_pre, post=post, drop=getattr(h, "drop", 0.0))
    chans = [d["num_chs"] for d in _feature_points(m)]
    return m.stem, list(m.stages), head, chans


# family -> (timm class path, splitter)
_SPLITTERS: Dict[str, Tuple[str, Callable[[nn.Module], Split]]] = {
    "resnet": ("timm.models.resnet.ResNet", _split_resnet),
    "efficientnet": ("timm.models.efficientnet.EfficientNet", _split_efficientnet),
    "mobilenetv3": ("timm.models.mobilenetv3.MobileNetV3", _split_mobilenetv3),
    "convnext": ("timm.models.convnext.ConvNeXt", _split_convnext),
}


def _unsupported(name: str, what: str) -> TimmArchError:
    return TimmArchError(f"timm model {name!r} ({what}) cannot be split into a StagedNet "
                         f"(stem / stages / head); supported timm families: {SUPPORTED}")


def timm_family(name: str) -> str:
    """The supported family of timm model ``name`` (without building it), or raise."""
    import timm

    if not timm.is_model(name.split(".", 1)[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise TimmArchError(f"unknown timm model {name!r}{hint}; any name from timm.list_models() "
                            f"in a supported family works: {SUPPORTED}")
    module = timm.models.model_entrypoint(name.split(".", 1)[0]).__module__.rsplit(".", 1)[-1]
    if module not in _SPLITTERS:
        raise _unsupported(name, f"defined in timm.models.{module}")
    return module


class TimmStagedNet(StagedNet):
    """A timm model re-parented as a StagedNet; ``timm_name`` and ``pretrained_cfg`` kept."""

    def __init__(self, name: str, num_classes: int, pretrained: bool = False, **kwargs):
        import timm

        family = timm_family(name)
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        cls_path, split = _SPLITTERS[family]
        mod_name, cls_name = cls_path.rsplit(".", 1)
        if not isinstance(model, getattr(importlib.import_module(mod_name), cls_name)):
            raise _unsupported(name, f"class {type(model).__name__}, expected {cls_path}")
        stem, stages, head, chans = split(model)
        if len(chans) != len(stages):
            raise TimmArchError(f"{name}: {len(stages)} stages but {len(chans)} channel counts")
        super().__init__(stem, stages, head)
        self._set_stage_channels(chans)
        self.timm_name = name
        self.timm_family = family
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
