"""rkd (Park et al. 2019, relational KD): CE + rkd_weight · rkd_loss(e_s, e_t; distance_weight,
angle_weight) on the pooled embeddings (mdistiller ``RKD.py`` ``pooled_feat``)."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("rkd")
class RKD(Distiller):
    hparam_names = ("ce_weight", "rkd_weight", "distance_weight", "angle_weight", "squared", "eps")

    def loss(self, batch):
        h = self.hparams
        fs, ft = self.features(batch["image"])
        rkd = KF.rkd_loss(fs.embedding, ft.embedding, distance_weight=h["distance_weight"],
                          angle_weight=h["angle_weight"], squared=bool(h["squared"]), eps=h["eps"])
        return {
            "ce": h["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "rkd": h["rkd_weight"] * rkd,
        }
