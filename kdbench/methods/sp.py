"""sp (Tung & Mori 2019, similarity-preserving KD): CE + sp_weight · sp_loss(F_s, F_t) on the
last stage outputs (mdistiller ``SP.py`` ``feats[-1]``; RepDistiller ``feat[-2]``)."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("sp")
class SP(Distiller):
    hparam_names = ("ce_weight", "sp_weight")

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "sp": self.hparams["sp_weight"] * KF.sp_loss(fs.stages[-1], ft.stages[-1]),
        }
