"""Pre-activation (pre-ReLU) stage outputs of a StagedNet, for ReviewKD and OFD.

mdistiller's models return ``preact_feats``: each stage's output before its final ReLU.
kdbench's StagedNets return post-activation stage outputs; :class:`PreactTap` recovers the
pre-activations without touching the model code: a forward pre-hook on the *last*
``nn.ReLU`` module of each stage (in module order: the last block's final ReLU) stores a
copy of its input while the tap is active. A stage counts as ending in that ReLU only if a
probe forward shows that the tensor the ReLU returns is the stage output itself; otherwise
(pre-activation WRN blocks, MobileNetV2's linear bottlenecks, stages ending in pooling or
another activation) the stage output itself is its pre-activation, as in mdistiller where
such stages' ``preact_feats`` equal their ``feats``.

:func:`bn_before_relu` finds the BatchNorm that feeds a tapped ReLU (the last BatchNorm of
the stage's last block outside a ``shortcut``/``downsample`` branch, e.g. BasicBlock's
``bn2``, mdistiller's ``get_bn_before_relu``).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

_SKIP_BRANCHES = ("shortcut", "downsample")


def _last_relu(stage: nn.Module) -> Optional[nn.ReLU]:
    last = None
    for m in stage.modules():
        if isinstance(m, nn.ReLU):
            last = m
    return last


class PreactTap:
    """Pre-ReLU outputs of every stage of ``model`` (see the module docstring).

    Use ``with tap: feats = model.forward_features(x)``, then ``tap.preacts(feats.stages)``.
    ``tapped[k]`` says whether stage k's pre-activation comes from its final ReLU."""

    def __init__(self, model: nn.Module, input_size: int, in_chans: int = 3):
        self.active = False
        self._store: dict = {}
        self.relus = [_last_relu(s) for s in model.stages]
        self.handles = []
        for k, relu in enumerate(self.relus):
            if relu is not None:
                self.handles.append(relu.register_forward_pre_hook(self._hook(k)))
        self.tapped = self._probe(model, input_size, in_chans)

    def _hook(self, k: int):
        def pre(module, inputs):
            if self.active:
                self._store[k] = inputs[0].clone()  # the ReLU may be in place

        return pre

    @torch.no_grad()
    def _probe(self, model: nn.Module, size: int, in_chans: int) -> List[bool]:
        # a stage ends in its last ReLU when the tensor that ReLU returns *is* the stage
        # output (identity, not values: works on the meta device too)
        returned: dict = {}

        def note(k):
            def post(module, inputs, output):
                returned[k] = output
            return post

        handles = [r.register_forward_hook(note(k)) for k, r in enumerate(self.relus) if r is not None]
        dev = next(model.parameters()).device
        was = model.training
        model.eval()
        try:
            f = model.forward_features(torch.zeros(1, in_chans, size, size, device=dev))
        finally:
            model.train(was)
            for h in handles:
                h.remove()
        return [returned.get(k) is f.stages[k] for k in range(len(self.relus))]

    def __enter__(self):
        self._store = {}
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    def preacts(self, stage_outputs: List[torch.Tensor]) -> List[torch.Tensor]:
        out = [self._store[k] if self.tapped[k] else f for k, f in enumerate(stage_outputs)]
        self._store = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def bn_before_relu(stage: nn.Module) -> Optional[nn.BatchNorm2d]:
    """The BatchNorm feeding the stage's final ReLU: the last ``BatchNorm2d`` (outside
    shortcut/downsample branches) of the last child of the stage that has one, e.g. the
    last BasicBlock's ``bn2``, or WRN's final BN before its final ReLU (None if none)."""
    for block in reversed(list(stage.children()) or [stage]):
        last = None
        for name, m in block.named_modules():
            if any(part in _SKIP_BRANCHES for part in name.split(".")):
                continue
            if isinstance(m, nn.BatchNorm2d):
                last = m
        if last is not None:
            return last
    return None


@torch.no_grad()
def bn_consuming_outputs(model: nn.Module, input_size: int, in_chans: int = 3) -> List[Optional[nn.BatchNorm2d]]:
    """For every stage, the BatchNorm2d whose input *is* that stage's output tensor (a
    pre-activation network's next BN-ReLU, e.g. WRN's next block ``bn1`` or the head's
    BN), or None. One probe forward (works on the ``meta`` device too)."""
    seen: list = []  # (input tensor, BN), the tensors kept alive so that `is` is meaningful
    handles = []

    def note(mod, inputs):  # returns None: the input is left alone
        seen.append((inputs[0], mod))

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(note))
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        f = model.forward_features(torch.zeros(1, in_chans, input_size, input_size, device=dev))
        found = [next((bn for inp, bn in seen if inp is t), None) for t in f.stages]
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return found


def margin_bns(model: nn.Module, input_size: int, tapped: List[bool]) -> List[Optional[nn.BatchNorm2d]]:
    """OFD's "BN before ReLU" per stage: for a stage ending in BN(+residual) -> ReLU its
    :func:`bn_before_relu`; for a pre-activation stage the BN that consumes its output."""
    consuming = None
    out = []
    for k, stage in enumerate(model.stages):
        bn = bn_before_relu(stage) if tapped[k] else None
        if bn is None and not tapped[k]:
            if consuming is None:
                consuming = bn_consuming_outputs(model, input_size)
            bn = consuming[k]
        out.append(bn)
    return out
