"""nst (Huang & Wang 2017, neuron selectivity transfer): CE + nst_weight · Σ_k nst_loss(F_s^k, F_t^k).

Every student stage meets the teacher stage at the same relative depth (mdistiller
``NST.py`` / RepDistiller: the three stage outputs of a CIFAR net, post-ReLU ``feats``);
polynomial-kernel MMD in :func:`kdbench.functional.nst_loss`.
"""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, register_method


@register_method("nst")
class NST(Distiller):
    hparam_names = ("ce_weight", "nst_weight")

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        pairs = stage_pairs(len(fs.stages), len(ft.stages))
        nst = sum(KF.nst_loss(fs.stages[i], ft.stages[j]) for i, j in pairs)
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "nst": self.hparams["nst_weight"] * nst,
        }
