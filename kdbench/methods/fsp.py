"""fsp (Yim et al. 2017, flow of solution procedure), RepDistiller's two-stage protocol.

1. Initialisation stage (:mod:`kdbench.methods.init_stage`): the student's stem and
   stages (its "feature modules"; the head stays in eval mode and untrained) are trained
   with :func:`kdbench.functional.fsp_loss` over [stem output, stage outputs] of student
   and teacher (RepDistiller ``feat[:-1]``), the teacher's stages taken at the student
   stages' relative depth.
2. Classification: ce_weight · CE (RepDistiller's main stage has no distillation term for
   fsp: ``loss_kd = 0``, ``-a 0``).

FSP matrices pair channels one to one: the stems and every paired stage need equal
channel counts (:meth:`check_pair`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, PairError, register_method
from kdbench.methods.init_stage import INIT_HPARAMS, InitStage


def stem_and_stages(net, x):
    """[stem output, stage 0 output, ...] of a StagedNet (no head)."""
    h = net.stem(x)
    outs = [h]
    for stage in net.stages:
        h = stage(h)
        outs.append(h)
    return outs


@torch.no_grad()
def map_channels(net, input_size: int = 32):
    """Channel counts of [stem output, stage outputs] (one eval-mode forward; a model on
    the meta device is probed through its CPU twin, ``StagedNet.probe_twin``)."""
    if hasattr(net, "probe_twin"):
        net = net.probe_twin()
    was = net.training
    net.eval()
    try:
        x = torch.zeros(1, 3, input_size, input_size, device=next(net.parameters()).device)
        return [f.shape[1] for f in stem_and_stages(net, x)]
    finally:
        net.train(was)


@register_method("fsp")
class FSP(InitStage, Distiller):
    hparam_names = ("ce_weight",) + INIT_HPARAMS

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        self._setup_init_stage()
        self.pairs = stage_pairs(student.num_stages, teacher.num_stages)

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        cs, ct = map_channels(student), map_channels(teacher)
        pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in stage_pairs(len(cs) - 1, len(ct) - 1)]
        for i, j in pairs:
            if cs[i] != ct[j]:
                what = "stem" if i == 0 else f"stage {i - 1}"
                raise PairError(cls.name, teacher.arch, student.arch,
                                f"the student's {what} has {cs[i]} channels, the teacher's matching map "
                                f"{ct[j]}: FSP matrices need equal channel counts")

    def init_modules(self):
        return [self.student.stem, self.student.stages]

    def init_loss(self, batch):
        x = batch["image"]
        gs = stem_and_stages(self.student, x)
        with torch.no_grad():
            gt = stem_and_stages(self.teacher, x)
        return KF.fsp_loss([gs[0]] + [gs[i + 1] for i, _ in self.pairs],
                           [gt[0]] + [gt[j + 1] for _, j in self.pairs])

    def loss(self, batch):
        logits = self.student(batch["image"])
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(logits, batch["label"])}
