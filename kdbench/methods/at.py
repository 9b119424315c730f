"""at (Zagoruyko & Komodakis 2017): CE + at_weight · Σ_k at_loss(F_s^k, F_t^k)."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, register_method


@register_method("at")
class AT(Distiller):
    hparam_names = ("ce_weight", "at_weight", "p")

    def loss(self, batch):
        x = batch["image"]
        fs, ft = self.features(x)
        pairs = stage_pairs(len(fs.stages), len(ft.stages))
        at = sum(KF.at_loss(fs.stages[i], ft.stages[j], p=self.hparams["p"]) for i, j in pairs)
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "at": self.hparams["at_weight"] * at,
        }
