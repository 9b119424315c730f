"""fitnet (Romero et al. 2015): CE + hint_weight · MSE(R(F_s^k), F_t^k) at the middle stage."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench.methods.adapters import conv_bridge, stage_pairs
from kdbench.methods.base import Distiller, register_method


@register_method("fitnet")
class FitNet(Distiller):
    hparam_names = ("ce_weight", "hint_weight")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        pairs = stage_pairs(len(s_shapes), len(t_shapes))
        self.hint_student, self.hint_teacher = pairs[len(s_shapes) // 2]
        self.regressor = conv_bridge(s_shapes[self.hint_student], t_shapes[self.hint_teacher])

    def extra_modules(self):
        return [self.regressor]

    def loss(self, batch):
        x = batch["image"]
        fs, ft = self.features(x)
        hint = self.regressor(fs.stages[self.hint_student])
        return {
            "ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, batch["label"]),
            "hint": self.hparams["hint_weight"] * F.mse_loss(hint, ft.stages[self.hint_teacher]),
        }
