"""ab (Heo et al. 2019, activation boundaries), RepDistiller's two-stage protocol.

1. Initialisation stage (:mod:`kdbench.methods.init_stage`): a connector per paired stage
   and the student's stem and stages are trained with :func:`kdbench.functional.ab_loss`
   (margin ``margin``) between the connected student **pre-activation** stage outputs and
   the teacher's (RepDistiller ``feat[1:-1]`` with ``preact=True``), the teacher's stages
   taken at the student stages' relative depth.
2. Classification: ce_weight · CE (RepDistiller's main stage has no distillation term for
   ab: ``loss_kd = 0``, ``-a 0``; the connector is left unused).

Pre-activations: a stage's output produced by an ``nn.ReLU`` module (kdbench's ResNets,
timm's ResNets) is replaced by that ReLU's input (:func:`stage_preacts`, forward hooks); a
stage whose output is not a ReLU's (WRN's pre-activation blocks, MobileNetV2's linear
bottlenecks, ConvNeXt) is already a pre-activation and used as it is. Students whose
stage output is a non-negative map no ReLU module made (ShuffleNets' functional ReLU, a
VGG stage's max-pool after its ReLU) have no reachable pre-activation: :meth:`check_pair`
rejects them. The teacher needs none: ab_loss reads only the sign of its map, and
relu(t) > 0 exactly where t > 0.

Connector (RepDistiller ``models/util.py`` ``Connector``/``ConvReg`` without ReLU): the
identity when channels and size agree, else a conv + BN: 1×1 (equal size), 3×3 stride 2
(student 2× larger), 4×4 stride-2 transposed (2× smaller).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, PairError, register_method
from kdbench.methods.init_stage import INIT_HPARAMS, InitStage
from kdbench.models import create_model


def _last_block(stage: nn.Module) -> nn.Module:
    children = list(stage.children())
    return children[-1] if isinstance(stage, nn.Sequential) and children else stage


def stage_preacts(net, x) -> List[torch.Tensor]:
    """Stage outputs of a StagedNet before their final ReLU: where stage k's output is the
    output of an ``nn.ReLU`` module of the stage's last block, that ReLU's input (cloned
    before an in-place ReLU overwrites it; in the graph); else the stage output itself.
    Also returns, per stage, whether a ReLU's input was found."""
    last: list = []  # [(output, input)] of the latest ReLU call, the tensors held (no id reuse)
    handles = []

    def pre(module, inputs):
        module._kdbench_preact = inputs[0].clone() if getattr(module, "inplace", False) else inputs[0]

    def post(module, inputs, output):
        last[:] = [(output, module._kdbench_preact)]
        del module._kdbench_preact

    outs, from_relu = [], []
    try:
        for stage in net.stages:
            for m in _last_block(stage).modules():
                if isinstance(m, nn.ReLU):
                    handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        h = net.stem(x)
        for stage in net.stages:
            last.clear()
            h = stage(h)
            pre_h = last[0][1] if last and last[0][0] is h else None
            from_relu.append(pre_h is not None)
            outs.append(h if pre_h is None else pre_h)
    finally:
        for hd in handles:
            hd.remove()
        last.clear()
    return outs, from_relu


def connector(src: Sequence[int], dst: Sequence[int]) -> nn.Module:
    """RepDistiller's AB connector for one stage: C×H×W -> C'×H'×W'."""
    c_in, h_in, w_in = src
    c_out, h_out, w_out = dst
    if (c_in, h_in, w_in) == (c_out, h_out, w_out):
        return nn.Identity()
    if (h_in, w_in) == (2 * h_out, 2 * w_out):
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
    elif (2 * h_in, 2 * w_in) == (h_out, w_out):
        conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    elif h_in >= h_out and w_in >= w_out:
        conv = nn.Conv2d(c_in, c_out, (1 + h_in - h_out, 1 + w_in - w_out))
    else:
        raise KDBenchError(f"ab: cannot connect a {c_in}×{h_in}×{w_in} student stage to a "
                           f"{c_out}×{h_out}×{w_out} teacher stage (the student map is smaller, not 2× smaller)")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def _check_shapes(s_shapes, t_shapes, pairs):
    for i, j in pairs:
        (_, hs, ws), (_, ht, wt) = s_shapes[i], t_shapes[j]
        if not ((hs, ws) == (ht, wt) or (hs, ws) == (2 * ht, 2 * wt) or (2 * hs, 2 * ws) == (ht, wt)
                or (hs >= ht and ws >= wt)):
            return f"student stage {i} is {hs}×{ws}, teacher stage {j} {ht}×{wt}: no connector fits"
    return None


@register_method("ab")
class AB(InitStage, Distiller):
    hparam_names = ("ce_weight", "margin") + INIT_HPARAMS

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        self._setup_init_stage()
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        self.pairs = stage_pairs(len(s_shapes), len(t_shapes))
        bad = _check_shapes(s_shapes, t_shapes, self.pairs)
        if bad:
            raise KDBenchError(f"ab cannot run on {getattr(teacher, 'arch', '?')}->{getattr(student, 'arch', '?')}: {bad}")
        self.connectors = nn.ModuleList([connector(s_shapes[i], t_shapes[j]) for i, j in self.pairs])

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        pairs = stage_pairs(student.num_stages, teacher.num_stages)
        bad = _check_shapes(student.infer_stage_shapes(32), teacher.infer_stage_shapes(32), pairs)
        if bad:
            raise PairError(cls.name, teacher.arch, student.arch, bad)
        # pre-activations: try a real (CPU) copy of the student; the meta one has no values
        with torch.device("cpu"):
            probe = create_model(student.arch, student.num_classes).eval()
        with torch.no_grad():
            outs, from_relu = stage_preacts(probe, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        for i, _ in pairs:
            if not from_relu[i] and bool((outs[i] >= 0).all()):
                raise PairError(cls.name, teacher.arch, student.arch,
                                f"student stage {i}'s output is non-negative but not made by an nn.ReLU module "
                                "(a functional ReLU or a pool after it): its pre-activation is not reachable")

    def init_modules(self):
        return [self.connectors, self.student.stem, self.student.stages]

    def init_loss(self, batch):
        x = batch["image"]
        preacts, _ = stage_preacts(self.student, x)
        with torch.no_grad():
            ft = self.teacher.forward_features(x)
        gs = [conn(preacts[i]) for conn, (i, _) in zip(self.connectors, self.pairs)]
        return KF.ab_loss(gs, [ft.stages[j] for _, j in self.pairs], margin=float(self.hparams["margin"]))

    def loss(self, batch):
        logits = self.student(batch["image"])
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(logits, batch["label"])}
