"""kd (Hinton et al. 2015): ce_weight·CE + kd_weight·T²·KL(p_t ‖ p_s).

``logit_stand`` (optional, default off): logit standardization (Sun et al. 2024) z-scores
both logit vectors before the softmax (``kd_loss(..., logit_stand=True)``); the board row
``kd_ls`` is this method with the option on and the reference's base temperature and
weights (params/methods/kd_ls.yaml).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method, register_variant


@register_method("kd")
class KD(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "temperature")
    optional_hparams = {"logit_stand": False}

    def teacher_logits(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(batch["image"])

    def logit_terms(self, student_logits, teacher_logits, labels):
        h = self.hparams
        return {
            "ce": h["ce_weight"] * F.cross_entropy(student_logits, labels),
            "kd": h["kd_weight"] * KF.kd_loss(student_logits, teacher_logits, h["temperature"],
                                              logit_stand=bool(h["logit_stand"])),
        }

    def loss(self, batch):
        return self.logit_terms(self.student(batch["image"]), self.teacher_logits(batch), batch["label"])


register_variant("kd_ls", KD, "kd with logit standardization (params/methods/kd_ls.yaml).")
