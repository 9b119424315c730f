"""mlkd — Multi-Level Logit Distillation (Jin et al., CVPR 2023).

As the reference (Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/
KD_ours.py`` with its ``AugTrainer``): every batch comes in a weak view (the dataset's
crop/flip) and a strong view (own crop/flip + RandAugment(2, 10) + Cutout,
:mod:`kdbench.data.randaugment`); student and teacher see both. Loss =
ce_weight·(CE(z_s^weak, y) + CE(z_s^strong, y)) + kd_weight·(kd + cc + bc), the instance,
class and batch terms of :func:`kdbench.functional.mlkd_terms` over the temperatures
(T, 3, 5, 2, 6). ``logit_stand`` (optional) z-scores the logits of the instance terms, as
the logit-standardization reference's ``MLKD.py``; ``mlkd_ls`` has it on.
The deployed model is the plain student; only the training loader changes
(``loader_options``), so an in-memory dataset is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.base import Distiller, register_method, register_variant


@register_method("mlkd")
class MLKD(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "temperature")
    optional_hparams = {"logit_stand": False}

    def loader_options(self):
        return {"strong_view": True}

    def loss(self, batch):
        if "image_strong" not in batch:
            raise KDBenchError("mlkd needs the loader's strong view (batch['image_strong']): make the "
                               "training loader with **distiller.loader_options()")
        y = batch["label"]
        weak, strong = batch["image"], batch["image_strong"]
        z_sw, z_ss = self.student(weak), self.student(strong)
        with torch.no_grad():
            z_tw, z_ts = self.teacher(weak), self.teacher(strong)
        h = self.hparams
        terms = KF.mlkd_terms(z_sw, z_tw, z_ss, z_ts, h["temperature"], logit_stand=bool(h["logit_stand"]))
        return {"ce": h["ce_weight"] * (F.cross_entropy(z_sw, y) + F.cross_entropy(z_ss, y)),
                **{k: h["kd_weight"] * v for k, v in terms.items()}}


register_variant("mlkd_ls", MLKD, "mlkd with logit standardization (params/methods/mlkd_ls.yaml).")
