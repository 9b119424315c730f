"""dist (Huang et al., NeurIPS 2022): ce_weight·CE + dist_weight·DIST(z_s, z_t).

DIST = τ²·(β·inter + γ·intra) on softmax(z/τ): 1 − mean Pearson correlation per sample
(over classes) and per class (over the batch), :func:`kdbench.functional.dist_loss`.
The reference (hunto/image_classification_sota ``lib/models/losses/kd_loss.py``) puts the
weights outside the loss: ``ori_loss_weight`` (CE) and ``kd_loss_weight``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("dist")
class DIST(Distiller):
    hparam_names = ("ce_weight", "dist_weight", "inter_weight", "intra_weight", "temperature")

    def loss(self, batch):
        y = batch["label"]
        z_s, z_t = self.student_teacher_logits(batch)
        h = self.hparams
        dist = KF.dist_loss(z_s, z_t, beta=h["inter_weight"], gamma=h["intra_weight"], tau=h["temperature"])
        return {"ce": h["ce_weight"] * F.cross_entropy(z_s, y), "dist": h["dist_weight"] * dist}
