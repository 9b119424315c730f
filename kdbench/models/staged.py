"""The StagedNet contract every model satisfies (ours and timm's).

A StagedNet is ``stem`` -> ``stages[0..n-1]`` -> ``head`` (global pool -> fc). Methods and
evaluations only ever talk to models through this interface, so that a distillation
method written once works for every architecture.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
from torch import nn


@contextmanager
def skip_init():
    """``torch.nn.init``'s in-place initialisers as no-ops: for models built only for their
    shapes (validation's ``meta`` models: their random init would run through torch's
    slow Python decompositions, and import torch._dynamo)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


@dataclass
class Features:
    """One forward pass, everything at once. ``stages[k]`` is stage k's output (still in
    the autograd graph), ``embedding`` the pooled fc input, ``logits`` the output."""

    stages: List[torch.Tensor]
    embedding: torch.Tensor
    logits: torch.Tensor
    extra: dict = field(default_factory=dict)


class Head(nn.Module):
    """Global average pool -> flatten -> (optional pre-fc activation) -> fc."""

    def __init__(self, in_channels: int, num_classes: int, pre: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.pre(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class StagedNet(nn.Module):
    """Base class: subclasses set ``stem`` (module), ``stages`` (nn.ModuleList, n >= 3)
    and ``head`` (an object with ``embed(x)`` and ``fc``), and ``arch`` (its name)."""

    arch: str = "?"
    stem: nn.Module
    stages: nn.ModuleList
    head: Head

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], head: Head):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        if len(self.stages) < 3:
            raise ValueError(f"a StagedNet needs at least 3 stages, got {len(self.stages)}")

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_classes(self) -> int:
        return self.head.fc.out_features

    @property
    def embedding_dim(self) -> int:
        return self.head.fc.in_features

    @property
    def stage_channels(self) -> List[int]:
        return list(self._stage_channels)

    def _run(self, start: int, h: torch.Tensor, keep: bool):
        outs = []
        for stage in self.stages[start:]:
            h = stage(h)
            if keep:
                outs.append(h)
        emb = self.head.embed(h)
        return outs, emb, self.head.fc(emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(0, self.stem(x), keep=False)[2]

    def forward_features(self, x: torch.Tensor) -> Features:
        outs, emb, logits = self._run(0, self.stem(x), keep=True)
        return Features(outs, emb, logits)

    def forward_from(self, k: int, feat: torch.Tensor, return_features: bool = False):
        """Run stages k+1.. and the head on an injected stage-k output ``feat``.

        Returns the logits, or with ``return_features=True`` a :class:`Features` whose
        ``stages`` holds the *later* stage outputs (stages k+1..n-1)."""
        if not -self.num_stages <= k < self.num_stages:
            raise IndexError(f"stage {k} out of range for {self.num_stages} stages")
        k = k % self.num_stages
        outs, emb, logits = self._run(k + 1, feat, keep=return_features)
        return Features(outs, emb, logits) if return_features else logits

    def tap_modules(self) -> List[nn.Module]:
        """One module per stage whose output is that stage's *tap*: the early, pre-activation
        block output TDD reads the teacher's decisions from (KamalEngine pools
        ``layer{1,2,3}.2.bn2`` of resnet56: the 3rd of 9 blocks, before the residual
        addition and ReLU). Families override this (:func:`tap_block` picks the block):

        - CIFAR ResNets and the CIFAR-stem ResNet18/34/50: ``bn2`` (Bottleneck: ``bn3``)
          of block ceil(n/3) - 1 — the reference's layer for resnet56;
        - WRN: ``conv2`` of that block (a pre-activation block's branch ends there);
        - the default — MobileNetV2 (whose stage output is already the linear,
          pre-activation bottleneck output), VGG, ShuffleNet, timm models — is the
          stage itself (its output): the nearest equivalent without a per-family rule."""
        return list(self.stages)

    def forward_taps(self, x: torch.Tensor) -> Features:
        """:meth:`forward_features` plus ``extra["taps"]``: the output of every
        :meth:`tap_modules` module in this pass (one tensor N×C×h×w per stage, in the
        autograd graph). ``forward_features`` itself is unchanged."""
        taps: List[torch.Tensor | None] = [None] * self.num_stages
        modules = self.tap_modules()
        if len(modules) != self.num_stages:
            raise ValueError(f"{self.arch}: tap_modules() gave {len(modules)} modules for {self.num_stages} stages")

        def keep(slot):
            def hook(_module, _inputs, output):
                taps[slot] = output
            return hook

        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
        try:
            f = self.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        if any(t is None for t in taps):
            raise RuntimeError(f"{self.arch}: a tap module did not run in forward_features")
        f.extra["taps"] = taps
        return f

    @torch.no_grad()
    def infer_stage_shapes(self, input_size: int, in_chans: int = 3) -> List[tuple]:
        """(C, H, W) of every stage output for a square input: used to check that a
        teacher/student pair can be bridged before any training starts."""
        dev = next(self.parameters()).device
        if dev.type == "meta" and getattr(self, "arch", None):  # an arch's shapes: computed once
            key = (self.arch, self.num_classes, input_size, in_chans)
            if key not in _META_SHAPES:
                _META_SHAPES[key] = self.probe_twin().infer_stage_shapes(input_size, in_chans)
            return list(_META_SHAPES[key])
        was = self.training
        self.eval()
        try:
            f = self.forward_features(torch.zeros(1, in_chans, input_size, input_size, device=dev))
        finally:
            self.train(was)
        return [tuple(t.shape[1:]) for t in f.stages]

    def probe_twin(self) -> "StagedNet":
        """A model to run a probe forward on: this one, or for a model on the ``meta``
        device an uninitialised CPU twin of the same arch (meta kernels of conv/BN are
        Python decompositions: slow, and they import torch._dynamo). Same shapes and
        modules, values meaningless."""
        if next(self.parameters()).device.type != "meta" or not getattr(self, "arch", None):
            return self
        key = (self.arch, self.num_classes)
        if key not in _PROBE_TWINS:  # one per arch: a profile's checks probe the same archs many times
            with torch.device("cpu"), skip_init():
                _PROBE_TWINS[key] = _BUILD_MODEL(self.arch, self.num_classes)
        return _PROBE_TWINS[key]

    def _set_stage_channels(self, channels: Sequence[int]) -> None:
        self._stage_channels = [int(c) for c in channels]


#: the meta-device models' probes, per arch (their values are meaningless; shapes only)
_META_SHAPES: dict = {}
_PROBE_TWINS: dict = {}

#: builds a model by (arch, num_classes): kdbench.models sets it to its ``create_model``
#: (the registry sits above this base class, which never imports it)
_BUILD_MODEL = None


def set_model_builder(build) -> None:
    global _BUILD_MODEL
    _BUILD_MODEL = build


def tap_block(num_blocks: int) -> int:
    """Index of the block of a stage of ``num_blocks`` residual blocks whose pre-activation
    output is the stage's tap: the last block of the stage's first third, ceil(n/3) - 1
    (resnet56, n = 9: block 2, the reference's ``layer*.2``; resnet32: 1; resnet20, wrn_16_x: 0)."""
    if num_blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {num_blocks}")
    return max(0, math.ceil(num_blocks / 3) - 1)


def block_taps(stages: Sequence[nn.Module], block_type, attr: str) -> List[nn.Module]:
    """For every stage (an iterable of modules), ``getattr(block, attr)`` of its
    :func:`tap_block`-th module of type ``block_type`` (other modules, e.g. a final BN, are
    not counted)."""
    out = []
    for stage in stages:
        blocks = [m for m in stage if isinstance(m, block_type)]
        out.append(getattr(blocks[tap_block(len(blocks))], attr))
    return out


def kaiming_init_(model: nn.Module, linear_std: float | None = None,
                  linear_zero_bias: bool = False) -> None:
    """The reference (RepDistiller / torchvision) initialisation, in place: every conv
    gets Kaiming-normal weights (fan_out, ReLU gain, i.e. N(0, 2/(k*k*out))) and a zero
    bias; BatchNorm/GroupNorm weight 1, bias 0. Linear layers keep PyTorch's default
    unless ``linear_std`` is given (then N(0, linear_std) with zero bias) or
    ``linear_zero_bias`` is set (default weight, zero bias)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if (linear_std is not None or linear_zero_bias) and m.bias is not None:
                nn.init.zeros_(m.bias)
