"""kdsvd (Lee et al. 2018, KD with SVD): CE + kdsvd_weight · kdsvd_loss(stages_s, stages_t; k).

The student's stages meet the teacher's at the same relative depth (the three stage
outputs of a CIFAR net, as mdistiller ``KDSVD.py`` / RepDistiller). The RBF relation
between consecutive stages compares student and teacher channel by channel, so every
paired stage needs the same channel count: :meth:`check_pair` rejects other pairs.
"""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, PairError, register_method


@register_method("kdsvd")
class KDSVD(Distiller):
    hparam_names = ("ce_weight", "kdsvd_weight", "k")

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        cs, ct = student.stage_channels, teacher.stage_channels
        for i, j in stage_pairs(len(cs), len(ct)):
            if cs[i] != ct[j]:
                raise PairError(cls.name, teacher.arch, student.arch,
                                f"student stage {i} has {cs[i]} channels, teacher stage {j} {ct[j]}: "
                                "kdsvd relates channels one to one and needs equal counts")

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        pairs = stage_pairs(len(fs.stages), len(ft.stages))
        svd = KF.kdsvd_loss([fs.stages[i] for i, _ in pairs], [ft.stages[j] for _, j in pairs],
                            k=int(self.hparams["k"]))
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "kdsvd": self.hparams["kdsvd_weight"] * svd,
        }
