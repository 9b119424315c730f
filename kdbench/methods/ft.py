"""ft (Kim et al. 2018, factor transfer), RepDistiller's two-stage protocol.

1. Initialisation stage (:mod:`kdbench.methods.init_stage`): the paraphraser (a conv
   auto-encoder on the teacher's last stage output, factor channels ``paraphrase_rate`` ·
   C_t) is trained to reconstruct that output (MSE; RepDistiller ``pretrain.py``: only the
   paraphraser trains, the student is not involved).
2. Distillation: ce_weight · CE + ft_weight · ft_loss(translator(F_s), paraphraser
   encoder(F_t); p1, p2) on the last stage outputs (RepDistiller ``feat[-2]``). The
   paraphraser is frozen (eval mode, no gradient); the translator trains with the student.

Paraphraser (no BN) and translator (with BN): RepDistiller ``models/util.py``: three 3×3
convs (+ LeakyReLU 0.1), decoder three 3×3 transposed convs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method
from kdbench.methods.init_stage import INIT_HPARAMS, InitStage


def _stack(channels, conv, use_bn):
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if use_bn else nn.Identity(),
                   nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    def __init__(self, channels: int, rate: float, use_bn: bool = False):
        super().__init__()
        factor = int(channels * rate)
        self.encoder = _stack([channels, channels, factor, factor], nn.Conv2d, use_bn)
        self.decoder = _stack([factor, factor, channels, channels], nn.ConvTranspose2d, use_bn)

    def forward(self, x):
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    def __init__(self, channels: int, teacher_channels: int, rate: float, use_bn: bool = True):
        super().__init__()
        factor = int(teacher_channels * rate)
        self.encoder = _stack([channels, channels, factor, factor], nn.Conv2d, use_bn)

    def forward(self, x):
        return self.encoder(x)


@register_method("ft")
class FT(InitStage, Distiller):
    hparam_names = ("ce_weight", "ft_weight", "p1", "p2", "paraphrase_rate") + INIT_HPARAMS

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        self._setup_init_stage()
        c_s, c_t = student.stage_channels[-1], teacher.stage_channels[-1]
        rate = float(self.hparams["paraphrase_rate"])
        self.paraphraser = Paraphraser(c_t, rate)
        self.translator = Translator(c_s, c_t, rate)

    def init_modules(self):
        return [self.paraphraser]

    def init_loss(self, batch):
        with torch.no_grad():
            f_t = self.teacher.forward_features(batch["image"]).stages[-1]
        _, rec = self.paraphraser(f_t)
        return F.mse_loss(rec, f_t)

    def extra_modules(self):
        return [self.translator]

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "paraphraser") and bool(getattr(self, "init_done", False)):
            self.paraphraser.eval()  # frozen after its stage (RepDistiller: module_list[2].eval())
        return self

    def loss(self, batch):
        h = self.hparams
        fs, ft = self.features(batch["image"])
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(ft.stages[-1])
        factor_s = self.translator(fs.stages[-1])
        return {
            "ce": h["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "ft": h["ft_weight"] * KF.ft_loss(factor_s, factor_t, p1=h["p1"], p2=h["p2"]),
        }
