"""fcfd — Function-Consistent Feature Distillation (Liu et al., ICLR 2023).

Teacher and student must have the same number of stages n, with every stage pair's
spatial sizes equal or 2× apart (checked at construction: a clear error otherwise).

Stage indices. The paper (and its code) number the *stem* output as feature 0 and the
stage outputs 1..n; "every stage k ≥ 1" therefore means every real stage, stem excluded.
kdbench's StagedNet keeps the stem out of ``stages``, so here k runs over all stages
0..n-1 (0-based): bridges and appearance terms on every stage; switch points after
stages 0..n-2 (switching after the last stage would leave no later stage to run — the
reference code has no such candidate either).

- Bridges B_{s→t}^k and B_{t→s}^k for every stage, ``adapters.conv_bridge`` (3×3 conv +
  BN; stride 2 / transposed 4-2-1 conv for 2× size differences).
- Appearance: L_app = Σ_k MSE(B_{s→t}^k(F_s^k), sg F_t^k) + MSE(φ(B_{s→t}^{n-1}(F_s^{n-1})),
  φ(sg F_t^{n-1})), φ = GAP∘ReLU.
- Function: each step draws ``switch_paths`` (2) of the 2(n-1) candidate paths (switch
  after stage k, either direction) without replacement from the global torch RNG (so a
  resumed run, which restores that RNG, draws the same paths).
  Student→teacher at k: H = B_{s→t}^k(F_s^k) (the same tensor as in L_app) runs through the
  frozen teacher's stages k+1.. and head (``forward_from``; teacher parameters do not
  require grad but the graph is kept, so the gradient reaches the bridge and the
  student); each later stage output gets MSE against sg F_t^j, the last one also the φ
  term, and the logits λ·kd_loss(C_t(H), z_t).
  Teacher→student at k: G = B_{t→s}^k(sg F_t^k) runs through the student's stages k+1..
  and head; λ·kd_loss(C_s(G), z_t). This mixed forward uses batch statistics (the student
  is in train mode) but does not update the student's BN running statistics
  (:func:`frozen_bn_stats`); the bridges' own BN layers do update theirs.
- Loss: ce_weight·CE + kd_weight·kd_loss(z_s, z_t) + path_kd_weight·Σ path KDs
  + feature_weight·r(e)·(L_app + all path MSEs), r(e) = min(1, (e+1)/R) with R the
  ``ramp_epochs`` (given for 240 epochs) scaled to the run's length. Terms logged:
  ``ce``, ``kd``, ``path_kd``, ``appearance``, ``path_feature`` (the last two already
  carry feature_weight·r(e)).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.adapters import conv_bridge
from kdbench.methods.base import Distiller, register_method

S2T, T2S = "s2t", "t2s"


@contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Inside, BatchNorm layers of ``module`` that are training keep normalising with the
    batch statistics but neither update their running mean/var nor count the batch
    (``track_running_stats`` is switched off for the duration, then restored)."""
    changed = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.track_running_stats = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def _phi(x: torch.Tensor) -> torch.Tensor:
    """GAP∘ReLU: B×C×H×W -> B×C."""
    return F.relu(x).mean(dim=(2, 3))


@register_method("fcfd")
class FCFD(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "path_kd_weight", "feature_weight", "temperature",
                    "ramp_epochs", "switch_paths")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        if len(s_shapes) != len(t_shapes):
            raise KDBenchError(
                f"fcfd needs teacher and student with the same number of stages: teacher "
                f"{getattr(teacher, 'arch', '?')} has {len(t_shapes)}, student {getattr(student, 'arch', '?')} "
                f"has {len(s_shapes)}")
        try:
            self.s2t = nn.ModuleList([conv_bridge(s, t) for s, t in zip(s_shapes, t_shapes)])
            self.t2s = nn.ModuleList([conv_bridge(t, s) for s, t in zip(s_shapes, t_shapes)])
        except KDBenchError as err:
            raise KDBenchError(f"fcfd cannot pair teacher {getattr(teacher, 'arch', '?')} with student "
                               f"{getattr(student, 'arch', '?')} at input size {self.input_size}: {err}") from None
        self.num_stages = len(s_shapes)
        #: every switch path: (direction, switch after stage k)
        self.candidates: List[Tuple[str, int]] = [(d, k) for k in range(self.num_stages - 1) for d in (S2T, T2S)]

    def extra_modules(self):
        return [self.s2t, self.t2s]

    def ramp(self) -> float:
        """r(e) = min(1, (e+1)/R), R = ramp_epochs scaled to the run's length."""
        ramp = self.scaled_epochs(self.hparams["ramp_epochs"])
        return 1.0 if ramp <= 0 else min(1.0, (self.epoch + 1) / ramp)

    def draw_paths(self) -> List[Tuple[str, int]]:
        """``switch_paths`` distinct candidates, drawn with the global torch RNG."""
        m = min(int(self.hparams["switch_paths"]), len(self.candidates))
        order = torch.randperm(len(self.candidates))[:m].tolist()
        return [self.candidates[i] for i in order]

    def path_terms(self, path: Tuple[str, int], bridged: Sequence[torch.Tensor],
                   teacher_stages: Sequence[torch.Tensor], teacher_logits: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(kd_loss of the path's logits vs z_t, sum of its teacher-space MSE terms),
        both unweighted. ``bridged[k]`` = B_{s→t}^k(F_s^k); ``teacher_stages`` detached."""
        direction, k = path
        T = self.hparams["temperature"]
        if direction == S2T:
            out = self.teacher.forward_from(k, bridged[k], return_features=True)
            mse = sum(F.mse_loss(h, teacher_stages[j]) for j, h in zip(range(k + 1, self.num_stages), out.stages))
            mse = mse + F.mse_loss(_phi(out.stages[-1]), _phi(teacher_stages[-1]))
            return KF.kd_loss(out.logits, teacher_logits, T), mse
        if direction == T2S:
            g = self.t2s[k](teacher_stages[k])
            with frozen_bn_stats(self.student):
                logits = self.student.forward_from(k, g)
            return KF.kd_loss(logits, teacher_logits, T), teacher_logits.new_zeros(())
        raise ValueError(f"unknown switch direction {direction!r}")

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        h = self.hparams
        fs, ft = self.features(x)
        z_t = ft.logits
        bridged = [b(f) for b, f in zip(self.s2t, fs.stages)]
        app = sum(F.mse_loss(b, t) for b, t in zip(bridged, ft.stages))
        app = app + F.mse_loss(_phi(bridged[-1]), _phi(ft.stages[-1]))
        path_kd = z_t.new_zeros(())
        path_mse = z_t.new_zeros(())
        for path in self.draw_paths():
            kd_p, mse_p = self.path_terms(path, bridged, ft.stages, z_t)
            path_kd = path_kd + kd_p
            path_mse = path_mse + mse_p
        feature_scale = h["feature_weight"] * self.ramp()
        return {
            "ce": h["ce_weight"] * F.cross_entropy(fs.logits, y),
            "kd": h["kd_weight"] * KF.kd_loss(fs.logits, z_t, h["temperature"]),
            "path_kd": h["path_kd_weight"] * path_kd,
            "appearance": feature_scale * app,
            "path_feature": feature_scale * path_mse,
        }
