"""fitnet (Romero et al. 2015): CE + hint_weight · MSE(R(F_s^k), F_t^k) at the middle stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.methods.adapters import conv_bridge, stage_pairs
from kdbench.errors import KDBenchError
from kdbench.methods.base import Distiller, PairError, register_method

#: the input size check_pair probes the pair with (stage size ratios do not depend on it)
CHECK_INPUT_SIZE = 32


def stage_shapes(model, input_size: int):
    """``model.infer_stage_shapes(input_size)``, remembered on the model (an architecture's
    shapes never change; validation asks once per arch, not once per pair)."""
    cache = model.__dict__.setdefault("_stage_shapes", {})
    if input_size not in cache:
        cache[input_size] = model.infer_stage_shapes(input_size)
    return cache[input_size]


def hint_layout(student, teacher, input_size: int):
    """(student stage, teacher stage, regressor): the middle student stage, the teacher
    stage at the same relative depth, and the conv bridge between their outputs."""
    s_shapes, t_shapes = stage_shapes(student, input_size), stage_shapes(teacher, input_size)
    i, j = stage_pairs(len(s_shapes), len(t_shapes))[len(s_shapes) // 2]
    return i, j, conv_bridge(s_shapes[i], t_shapes[j])


@register_method("fitnet")
class FitNet(Distiller):
    hparam_names = ("ce_weight", "hint_weight")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        self.hint_student, self.hint_teacher, self.regressor = hint_layout(student, teacher, self.input_size)

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        """The hint regressor needs the two middle-stage outputs at equal or 2x-apart sizes."""
        try:
            with torch.device("meta"):  # the bridge's shapes only: no weights initialised
                hint_layout(student, teacher, CHECK_INPUT_SIZE)
        except KDBenchError as err:
            raise PairError(cls.name, teacher.arch, student.arch, f"no hint regressor: {err}") from None

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
