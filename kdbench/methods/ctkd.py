"""ctkd — Curriculum Temperature KD (Li et al., AAAI 2023; zhengli97/CTKD).

kd with a learnable global temperature: T = temp_start + temp_range·σ(GRL_λ(θ)), θ one
parameter (initialised to ``temp_init``) trained with the student (same SGD, lr and weight
decay, as the reference's ``trainable_list``). The gradient-reversal layer is the identity
forward and multiplies the gradient by λ backward (``models/temp_global.py``); the
curriculum makes λ go from ``lambda_max`` to ``lambda_min`` (0 -> −1: the temperature
increasingly *maximises* the distillation loss) with the reference's ``CosineDecay``:
λ(i) = min + (max − min)·(cos(π·min(i, L)/L) + 1)/2 at the 1-based epoch i, L =
``lambda_epochs`` (given for the 240-epoch recipe, scaled to the run's length).

Loss = ce_weight·CE + kd_weight·T²·KL(p_t ‖ p_s) at the learned T (T² in the graph too, as
``DistillKL``). ``logit_stand`` (optional) z-scores the logits first (the
logit-standardization reference's ``CTKD/distiller_zoo/KD.py``); ``ctkd_ls`` has it on.
The temperature parameter is part of the run's state (checkpoint, model.pt).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method, register_variant


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``lam`` (negative: reversal)."""

    @staticmethod
    def forward(ctx, x, lam: float):
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.lam, None


def gradient_reversal(x: torch.Tensor, lam: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, float(lam))


class GlobalTemperature(nn.Module):
    """CTKD's ``Global_T``: one learnable scalar θ, mapped to temp_start + temp_range·σ(θ)."""

    def __init__(self, init: float, temp_start: float, temp_range: float):
        super().__init__()
        self.theta = nn.Parameter(torch.full((1,), float(init)))
        self.temp_start, self.temp_range = float(temp_start), float(temp_range)

    def forward(self, lam: float) -> torch.Tensor:
        return self.temp_start + self.temp_range * torch.sigmoid(gradient_reversal(self.theta, lam))[0]


@register_method("ctkd")
class CTKD(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "temp_init", "temp_start", "temp_range",
                    "lambda_max", "lambda_min", "lambda_epochs")
    optional_hparams = {"logit_stand": False}

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        h = self.hparams
        self.temperature_module = GlobalTemperature(h["temp_init"], h["temp_start"], h["temp_range"])

    def extra_modules(self):
        return [self.temperature_module]

    def reversal_strength(self) -> float:
        """λ of the current epoch (the reference's CosineDecay at the 1-based epoch)."""
        h = self.hparams
        loops = self.scaled_epochs(h["lambda_epochs"])
        if loops <= 0:
            return float(h["lambda_min"])
        i = min(max(self.epoch + 1, 0), loops)
        return h["lambda_min"] + (h["lambda_max"] - h["lambda_min"]) * (math.cos(i * math.pi / loops) + 1.0) * 0.5

    def temperature(self) -> torch.Tensor:
        return self.temperature_module(self.reversal_strength())

    def loss(self, batch):
        y = batch["label"]
        z_s, z_t = self.student_teacher_logits(batch)
        h = self.hparams
        t = self.temperature()
        return {"ce": h["ce_weight"] * F.cross_entropy(z_s, y),
                "kd": h["kd_weight"] * KF.kd_loss(z_s, z_t, t, logit_stand=bool(h["logit_stand"]))}

    def artifacts(self):
        with torch.no_grad():
            return {"temperature": float(self.temperature_module(0.0))}


register_variant("ctkd_ls", CTKD, "ctkd with logit standardization (params/methods/ctkd_ls.yaml).")
