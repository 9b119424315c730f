"""pkt (Passalis & Tefas 2018, probabilistic knowledge transfer): CE + pkt_weight · pkt_loss(e_s, e_t)
on the pooled embeddings (the fc inputs; mdistiller ``PKT.py`` ``pooled_feat``)."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("pkt")
class PKT(Distiller):
    hparam_names = ("ce_weight", "pkt_weight")

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "pkt": self.hparams["pkt_weight"] * KF.pkt_loss(fs.embedding, ft.embedding),
        }
