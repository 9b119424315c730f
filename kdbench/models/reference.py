"""Parameter-name maps between the zoo and the reference CIFAR model definitions.

The CIFAR teachers of the KD literature were trained with RepDistiller's model code
(github:HobbitLong/RepDistiller ``models/*.py``, saved by ``train_teacher.py`` as
``{'epoch', 'model': state_dict, 'accuracy', 'optimizer'}``); mdistiller
(github:megvii-research/mdistiller ``mdistiller/models/cifar/*.py``) re-uses the same
modules under the same attribute names and loads the same files (``cifar_teachers.tar``).
The zoo mirrors those definitions module for module, only grouped as stem / stages /
head, so a checkpoint converts by renaming keys. One rule per family, kdbench key ->
reference key (the inverse map is built from the model's own ``state_dict``):

=================  ===================  ==================================================
zoo arch           reference name       reference key  ->  kdbench key
=================  ===================  ==================================================
resnet8..110,      resnet8..resnet110,  conv1/bn1 -> stem.0/stem.1; layer{i}.{j}.X ->
resnet8x4/32x4     resnet8x4/32x4       stages.{i-1}.{j}.X (downsample.k -> shortcut.k);
(resnet.py)                             fc -> head.fc
resnet18/34/50     ResNet18/34/50       conv1/bn1 -> stem.0/stem.1; layer{i}.{j}.X ->
(resnetv2.py)                           stages.{i-1}.{j}.X (shortcut.k kept); linear -> head.fc
wrn_D_W (wrn.py)   wrn_D_W              conv1 -> stem; block{i}.layer.{j}.X -> stages.{i-1}.{j}.X
                                        (convShortcut -> shortcut); bn1 (the final BN) ->
                                        stages.2.{n} (n = blocks per stage); fc -> head.fc
vgg8..19 (vgg.py)  vgg8..vgg19 (_bn)    block0.k -> stem.k; block{b}.k -> stages.{b-1}.1.k;
                                        classifier -> head.fc
mobilenetv2        MobileNetV2          conv1.k -> stem.k; blocks.{s}.{j}.conv.k ->
(mobilenetv2.py)   (mobile_half)        stages.{g}.{p}.{j}.conv.k (setting s is the p-th of
                                        stage g: 0,1 | 2 | 3,4 | 5,6); conv2.k -> head.pre.k;
                                        classifier.0 -> head.fc
shufflenetv1       ShuffleV1            conv1/bn1 -> stem.0/stem.1; layer{i}.{j}.conv{c} /
(ShuffleNetv1.py)                       .bn{c} -> stages.{i-1}.{j}.conv{c}.0 / .conv{c}.1;
                                        linear -> head.fc
shufflenetv2       ShuffleV2            conv1/bn1 -> stem.0/stem.1; DownBlock layer{i}.0.
(ShuffleNetv2.py)                       conv1,bn1,conv2,bn2 -> left.0-3, conv3,bn3 -> right.0-1,
                                        conv4,bn4,conv5,bn5 -> right.3-6; BasicBlock
                                        layer{i}.{j}.conv1,bn1,conv2,bn2,conv3,bn3 ->
                                        branch.0,1,3,4,5,6; conv2/bn2 -> head.pre.0/1;
                                        linear -> head.fc
=================  ===================  ==================================================

``num_batches_tracked`` BN buffers may be absent from a checkpoint (PyTorch < 0.4.1 saved
none; RepDistiller was developed on 0.4.0): they are then left at the model's value
(they play no part in evaluation, nor in training with a fixed BN momentum).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping

import torch
from torch import nn

from kdbench.errors import KDBenchError
from kdbench.models import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn

#: the BN buffer a checkpoint may lack (see the module docstring)
OPTIONAL_SUFFIX = ".num_batches_tracked"


class CheckpointMismatchError(KDBenchError, ValueError):
    """A checkpoint's tensors do not fit the architecture (missing/unexpected keys, shapes)."""


def _sub(rules, key: str) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(key)


def _layer(m: re.Match) -> str:  # stages.{i}.{j}. -> layer{i+1}.{j}.
    return f"layer{int(m.group(1)) + 1}.{m.group(2)}."


def _resnet_cifar(model: nn.Module) -> Callable[[str], str]:
    rules = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
             (r"^stages\.(\d+)\.(\d+)\.shortcut\.", lambda m: _layer(m) + "downsample."),
             (r"^stages\.(\d+)\.(\d+)\.", _layer), (r"^head\.fc\.", "fc.")]
    return lambda k: _sub(rules, k)


def _resnet_v2(model: nn.Module) -> Callable[[str], str]:
    rules = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
             (r"^stages\.(\d+)\.(\d+)\.", _layer), (r"^head\.fc\.", "linear.")]
    return lambda k: _sub(rules, k)


def _wrn(model: nn.Module) -> Callable[[str], str]:
    last = len(model.stages) - 1
    final_bn = len(model.stages[last]) - 2  # [blocks..., BatchNorm2d, ReLU]

    def block(m: re.Match) -> str:
        return f"block{int(m.group(1)) + 1}.layer.{m.group(2)}."

    rules = [(r"^stem\.", "conv1."), (rf"^stages\.{last}\.{final_bn}\.", "bn1."),
             (r"^stages\.(\d+)\.(\d+)\.shortcut\.", lambda m: block(m) + "convShortcut."),
             (r"^stages\.(\d+)\.(\d+)\.", block), (r"^head\.fc\.", "fc.")]
    return lambda k: _sub(rules, k)


def _vgg(model: nn.Module) -> Callable[[str], str]:
    rules = [(r"^stem\.(\d+)\.", r"block0.\1."),
             (r"^stages\.(\d+)\.1\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}."),
             (r"^head\.fc\.", "classifier.")]
    return lambda k: _sub(rules, k)


def _mobilenetv2(model: nn.Module) -> Callable[[str], str]:
    setting = {}  # (stage, position in stage) -> the reference's blocks index
    for g, stage in enumerate(model.stages):
        for p in range(len(stage)):
            setting[(g, p)] = len(setting)

    def blocks(m: re.Match) -> str:
        return f"blocks.{setting[(int(m.group(1)), int(m.group(2)))]}."

    rules = [(r"^stem\.(\d+)\.", r"conv1.\1."), (r"^stages\.(\d+)\.(\d+)\.", blocks),
             (r"^head\.pre\.(\d+)\.", r"conv2.\1."), (r"^head\.fc\.", "classifier.0.")]
    return lambda k: _sub(rules, k)


def _shufflenetv1(model: nn.Module) -> Callable[[str], str]:
    def conv(m: re.Match) -> str:
        kind = "conv" if m.group(4) == "0" else "bn"
        return f"layer{int(m.group(1)) + 1}.{m.group(2)}.{kind}{m.group(3)}."

    rules = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
             (r"^stages\.(\d+)\.(\d+)\.conv(\d)\.([01])\.", conv), (r"^head\.fc\.", "linear.")]
    return lambda k: _sub(rules, k)


_V2_DOWN = {("left", 0): "conv1", ("left", 1): "bn1", ("left", 2): "conv2", ("left", 3): "bn2",
            ("right", 0): "conv3", ("right", 1): "bn3", ("right", 3): "conv4", ("right", 4): "bn4",
            ("right", 5): "conv5", ("right", 6): "bn5"}
_V2_BASIC = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2", 5: "conv3", 6: "bn3"}


def _shufflenetv2(model: nn.Module) -> Callable[[str], str]:
    def down(m: re.Match) -> str:
        return f"layer{int(m.group(1)) + 1}.0.{_V2_DOWN[(m.group(2), int(m.group(3)))]}."

    def basic(m: re.Match) -> str:
        return f"layer{int(m.group(1)) + 1}.{m.group(2)}.{_V2_BASIC[int(m.group(3))]}."

    rules = [(r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
             (r"^stages\.(\d+)\.0\.(left|right)\.(\d+)\.", down),
             (r"^stages\.(\d+)\.(\d+)\.branch\.(\d+)\.", basic),
             (r"^head\.pre\.0\.", "conv2."), (r"^head\.pre\.1\.", "bn2."), (r"^head\.fc\.", "linear.")]
    return lambda k: _sub(rules, k)


def _family(arch: str):
    """(family name, kdbench-key -> reference-key rule factory) of a zoo arch."""
    if arch in resnet_cifar.ARCHS:
        return "RepDistiller models/resnet.py", _resnet_cifar
    if arch in resnet_imagenet.ARCHS:
        return "RepDistiller models/resnetv2.py", _resnet_v2
    if wrn.wrn_from_name(arch) is not None:
        return "RepDistiller models/wrn.py", _wrn
    if arch in vgg.ARCHS:
        return "RepDistiller models/vgg.py", _vgg
    if arch in mobilenetv2.ARCHS:
        return "RepDistiller models/mobilenetv2.py", _mobilenetv2
    if arch == "shufflenetv1":
        return "RepDistiller models/ShuffleNetv1.py", _shufflenetv1
    if arch == "shufflenetv2":
        return "RepDistiller models/ShuffleNetv2.py", _shufflenetv2
    return None


def supported_archs() -> List[str]:
    """The zoo archs whose reference checkpoints load (besides: any wrn_<depth>_<width>)."""
    names = list(resnet_cifar.ARCHS) + list(resnet_imagenet.ARCHS) + list(wrn.ARCHS) + list(vgg.ARCHS)
    return names + list(mobilenetv2.ARCHS) + list(shufflenet.ARCHS)


def key_map(model: nn.Module) -> Dict[str, str]:
    """kdbench state-dict key -> the reference's key, for every entry of ``model.state_dict()``."""
    arch = getattr(model, "arch", "?")
    fam = _family(arch)
    if fam is None:
        raise KDBenchError(f"no reference checkpoint layout for arch {arch!r}; supported: "
                           f"{', '.join(supported_archs())} (and any wrn_<depth>_<width>)")
    rename = fam[1](model)
    out = {}
    for k in model.state_dict():
        try:
            out[k] = rename(k)
        except KeyError:  # a zoo change the map does not know: a bug, said plainly
            raise KDBenchError(f"{arch}: no reference name for parameter {k!r} ({fam[0]})") from None
    return out


def to_reference_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s state dict under the reference's key names (what RepDistiller saves)."""
    names = key_map(model)
    return {names[k]: v for k, v in model.state_dict().items()}


def convert_reference_state(model: nn.Module, state: Mapping[str, torch.Tensor],
                            source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """A reference-layout state dict renamed to ``model``'s keys, after checking that it
    fits: every key must map onto a parameter or buffer of the same shape and every
    parameter or buffer must be given (``num_batches_tracked`` may be absent); otherwise
    one error lists the problems. A uniform ``module.`` prefix (nn.DataParallel) is
    removed first. ``model`` may live on the ``meta`` device (only shapes are read)."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    names = key_map(model)
    ours = model.state_dict()
    inverse = {ref: k for k, ref in names.items()}
    arch = getattr(model, "arch", "?")
    unexpected = sorted(k for k in state if k not in inverse)
    missing = sorted(ref for ref, k in inverse.items() if ref not in state and not ref.endswith(OPTIONAL_SUFFIX))
    shapes = []
    for ref, value in state.items():
        k = inverse.get(ref)
        if k is None:
            continue
        if not isinstance(value, torch.Tensor):
            shapes.append(f"{ref} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(ours[k].shape):
            shapes.append(f"{ref} has shape {list(value.shape)}, {arch} needs {list(ours[k].shape)} (for {k})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:6])}"
                        f"{' ...' if len(unexpected) > 6 else ''}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:4])}{' ...' if len(shapes) > 4 else ''}")
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {arch} ({_family(arch)[0]} layout): "
                                      + "; ".join(problems))
    return {k: state[ref] for ref, k in inverse.items() if ref in state}


def load_reference_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load a reference-layout state dict into ``model`` in place (checked as
    :func:`convert_reference_state`); returns the model."""
    converted = convert_reference_state(model, state, source)
    ours = model.state_dict()
    with torch.no_grad():
        for k, v in converted.items():
            ours[k].copy_(v.to(ours[k].dtype))  # state_dict() tensors share the model's storage
    return model
