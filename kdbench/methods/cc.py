"""cc (Peng et al. 2019, correlation congruence) as RepDistiller implements it:
CE + cc_weight · cc_loss(W_s e_s, W_t e_t).

e_s, e_t: the pooled embeddings (RepDistiller ``feat[-1]``); W_s, W_t: linear embeddings
(``LinearEmbed``, with bias) to ``feat_dim`` dimensions, **both** trained with the student
(the teacher's embedding enters without a graph, its projection with one), as RepDistiller
``train_student.py``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("cc")
class CC(Distiller):
    hparam_names = ("ce_weight", "cc_weight", "feat_dim")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        dim = int(self.hparams["feat_dim"])
        self.embed_student = nn.Linear(student.embedding_dim, dim)
        self.embed_teacher = nn.Linear(teacher.embedding_dim, dim)

    def extra_modules(self):
        return [self.embed_student, self.embed_teacher]

    def loss(self, batch):
        fs, ft = self.features(batch["image"])
        cc = KF.cc_loss(self.embed_student(fs.embedding), self.embed_teacher(ft.embedding))
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "cc": self.hparams["cc_weight"] * cc,
        }
