"""vid (Ahn et al. 2019, variational information distillation):
CE + vid_weight · Σ_k vid_loss(R_k(F_s^k), log_scale_k, F_t^k).

Every student stage meets the teacher stage at the same relative depth (the three stage
outputs of a CIFAR net: mdistiller ``VID.py`` ``feats[1:]``, RepDistiller ``feat[1:-1]``).
R_k: 1×1 conv (C_s -> C_t), ReLU, 1×1 conv, ReLU, 1×1 conv (no bias; the middle width
is C_t, as both references). The spatially larger of the two maps is average-pooled to
the smaller one before R_k. The per-channel variance softplus(log_scale) + eps starts at
``init_pred_var``; log_scale trains with R_k (RepDistiller and the authors' code;
mdistiller keeps its log_scales out of the optimizer).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, register_method


def _conv1x1(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 1, bias=False)


@register_method("vid")
class VID(Distiller):
    hparam_names = ("ce_weight", "vid_weight", "init_pred_var", "eps")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        cs, ct = student.stage_channels, teacher.stage_channels
        self.pairs = stage_pairs(len(cs), len(ct))
        var, eps = float(self.hparams["init_pred_var"]), float(self.hparams["eps"])
        start = math.log(math.expm1(var - eps))  # softplus⁻¹(var − eps)
        self.regressors = nn.ModuleList([
            nn.Sequential(_conv1x1(cs[i], ct[j]), nn.ReLU(), _conv1x1(ct[j], ct[j]), nn.ReLU(),
                          _conv1x1(ct[j], ct[j])) for i, j in self.pairs])
        self.log_scales = nn.ParameterList([nn.Parameter(torch.full((ct[j],), start)) for _, j in self.pairs])

    def extra_modules(self):
        return [self.regressors, self.log_scales]

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        vid = 0.0
        for (i, j), reg, log_scale in zip(self.pairs, self.regressors, self.log_scales):
            f_s, f_t = fs.stages[i], ft.stages[j]
            if f_s.shape[-2:] != f_t.shape[-2:]:
                size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
                f_s = F.adaptive_avg_pool2d(f_s, size) if f_s.shape[-2:] != size else f_s
                f_t = F.adaptive_avg_pool2d(f_t, size) if f_t.shape[-2:] != size else f_t
            vid = vid + KF.vid_loss(reg(f_s), log_scale, f_t, eps=float(self.hparams["eps"]))
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "vid": self.hparams["vid_weight"] * vid,
        }
