"""ofd — A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019).

As mdistiller ``distillers/OFD.py`` (after clovaai/overhaul-distillation):

- Features: the pre-ReLU outputs (:class:`~kdbench.methods.preact.PreactTap`) of the last
  min(n_s, n_t) stages of both networks (mdistiller's ``preact_feats[1:]`` aligned from
  the end), the teacher's average-pooled to the student's spatial size and detached.
- Connectors: conv k×k (``connector_kernel``, no bias) + BN from student to teacher
  channels, conv weights N(0, 2/(k·k·C_out)), BN 1/0.
- Margins: per teacher channel from the BatchNorm before its ReLU
  (:func:`kdbench.functional.ofd_margin`; :func:`~kdbench.methods.preact.margin_bns`
  finds it), computed once from the teacher's weights.
- Loss: ce_weight·CE + feat_weight·Σ_i ofd_loss(C_i(F_s,i), F_t,i, m_i) / 2^(n−1−i).
- Teacher BN: mdistiller's OFD puts the teacher in train mode (batch statistics), as the
  original; ``teacher_bn: train`` does so with its running statistics frozen (the saved
  teacher never changes), ``eval`` uses the running statistics.

A pair whose teacher has a stage without such a BatchNorm is rejected by ``check_pair``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.base import Distiller, PairError, register_method
from kdbench.methods.fcfd import frozen_bn_stats
from kdbench.methods.preact import PreactTap, margin_bns

TEACHER_BN = ("train", "eval")


def _connector(c_in: int, c_out: int, k: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, k, stride=1, padding=(k - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k * k * c_out)))
    bn = nn.BatchNorm2d(c_out)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


@register_method("ofd")
class OFD(Distiller):
    hparam_names = ("ce_weight", "feat_weight", "connector_kernel", "teacher_bn")

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        if hparams.get("teacher_bn") not in TEACHER_BN:
            raise KDBenchError(f"ofd: teacher_bn must be one of {list(TEACHER_BN)}, got {hparams.get('teacher_bn')!r}")
        n = min(teacher.num_stages, student.num_stages)
        size = 32
        teacher = teacher.probe_twin()  # the tap runs a forward: not on meta tensors
        tap = PreactTap(teacher, size)
        tap.remove()
        bns = margin_bns(teacher, size, tap.tapped)[-n:]
        missing = [teacher.num_stages - n + i for i, bn in enumerate(bns) if bn is None]
        if missing:
            raise PairError("ofd", teacher.arch, student.arch,
                            f"teacher stage(s) {missing} have no BatchNorm before their ReLU to take margins from")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        if self.hparams["teacher_bn"] not in TEACHER_BN:
            raise KDBenchError(f"ofd: teacher_bn must be one of {list(TEACHER_BN)}, got {self.hparams['teacher_bn']!r}")
        self.student_tap = PreactTap(student, self.input_size)
        self.teacher_tap = PreactTap(teacher, self.input_size)
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        n = min(len(s_shapes), len(t_shapes))
        self.s_idx = list(range(len(s_shapes) - n, len(s_shapes)))
        self.t_idx = list(range(len(t_shapes) - n, len(t_shapes)))
        k = int(self.hparams["connector_kernel"])
        self.connectors = nn.ModuleList([_connector(s_shapes[i][0], t_shapes[j][0], k)
                                         for i, j in zip(self.s_idx, self.t_idx)])
        bns = margin_bns(teacher, self.input_size, self.teacher_tap.tapped)
        for pos, j in enumerate(self.t_idx):
            bn = bns[j]
            if bn is None:
                raise PairError("ofd", getattr(teacher, "arch", "?"), getattr(student, "arch", "?"),
                                f"teacher stage {j} has no BatchNorm before its ReLU to take margins from")
            margin = KF.ofd_margin(bn.weight, bn.bias).to(torch.float32)
            self.register_buffer(f"margin{pos}", margin, persistent=False)

    def extra_modules(self):
        return [self.connectors]

    def teacher_preacts(self, x):
        with torch.no_grad(), self.teacher_tap:
            if self.hparams["teacher_bn"] == "train":
                self.teacher.train()
                try:
                    with frozen_bn_stats(self.teacher):
                        ft = self.teacher.forward_features(x)
                finally:
                    self.teacher.eval()
            else:
                ft = self.teacher.forward_features(x)
            return self.teacher_tap.preacts(ft.stages)

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        with self.student_tap:
            fs = self.student.forward_features(x)
            s_pre = self.student_tap.preacts(fs.stages)
        t_pre = self.teacher_preacts(x)
        n = len(self.s_idx)
        total = 0
        for pos, (i, j) in enumerate(zip(self.s_idx, self.t_idx)):
            s = self.connectors[pos](s_pre[i])
            t = F.adaptive_avg_pool2d(t_pre[j], tuple(s.shape[-2:])).detach()
            total = total + KF.ofd_loss(s, t, getattr(self, f"margin{pos}")) / 2 ** (n - pos - 1)
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, y),
                "ofd": self.hparams["feat_weight"] * total}
