"""kd (Hinton et al. 2015): ce_weight·CE + kd_weight·T²·KL(p_t ‖ p_s)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("kd")
class KD(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "temperature")

    def teacher_logits(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(batch["image"])

    def logit_terms(self, student_logits, teacher_logits, labels):
        h = self.hparams
        return {
            "ce": h["ce_weight"] * F.cross_entropy(student_logits, labels),
            "kd": h["kd_weight"] * KF.kd_loss(student_logits, teacher_logits, h["temperature"]),
        }

    def loss(self, batch):
        return self.logit_terms(self.student(batch["image"]), self.teacher_logits(batch), batch["label"])
