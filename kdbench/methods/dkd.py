"""dkd (Zhao et al. 2022): CE + min(epoch/warm-up, 1) · (α·TCKD + β·NCKD).

The warm-up is given for the 240-epoch recipe and scaled to the run's length; the factor
uses the 1-based epoch number (epoch 1 of a 20-epoch warm-up weighs 1/20), as mdistiller.
``logit_stand`` (optional, default off) z-scores both logit vectors first, as the
logit-standardization reference's DKD; the board row ``dkd_ls`` has it on
(params/methods/dkd_ls.yaml).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method, register_variant


@register_method("dkd")
class DKD(Distiller):
    hparam_names = ("ce_weight", "tckd_weight", "nckd_weight", "temperature", "warmup_epochs")
    optional_hparams = {"logit_stand": False}

    def warmup_factor(self) -> float:
        warmup = self.scaled_epochs(self.hparams["warmup_epochs"])
        return 1.0 if warmup <= 0 else min((self.epoch + 1) / warmup, 1.0)

    def loss(self, batch):
        y = batch["label"]
        z_s, z_t = self.student_teacher_logits(batch)
        h = self.hparams
        dkd = KF.dkd_loss(z_s, z_t, y, h["tckd_weight"], h["nckd_weight"], h["temperature"],
                          logit_stand=bool(h["logit_stand"]))
        return {"ce": h["ce_weight"] * F.cross_entropy(z_s, y), "dkd": self.warmup_factor() * dkd}


register_variant("dkd_ls", DKD, "dkd with logit standardization (params/methods/dkd_ls.yaml).")
