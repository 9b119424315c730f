"""fcfd — Function-Consistent Feature Distillation (Liu et al., ICLR 2023).

Reference: LiuDongyang6/FCFD, ``classification/models/meta.py`` (``MetaModel``,
``GhostForward``, ``build_bridge``) and ``classification/cifar/main.py``.

Teacher and student must have the same number of stages n, with every stage pair's
spatial sizes equal or 2× apart. The reference supports exactly that: ``MetaModel`` reads
its stage count from the teacher and indexes both models' stage shapes with the same
stage index (a stage-count mismatch is an index error there, a size ratio other than 1
or 2 a ``NotImplementedError``); its heterogeneous CIFAR pairs (resnet32x4→ShuffleV1/V2,
wrn_40_2→ShuffleV1, vgg13→MobileNetV2, ResNet50→MobileNetV2) all have equal stage
counts in its models' splits. ``check_pair`` rejects unequal stage counts before any job
runs; the size check needs the input size and runs at construction.

Stage indices. The paper (and its code) number the *stem* output as feature 0 and the
stage outputs 1..n; "every stage k ≥ 1" therefore means every real stage, stem excluded.
kdbench's StagedNet keeps the stem out of ``stages``, so here k runs over all stages
0..n-1 (0-based): bridges and appearance terms on every stage; switch points after
stages 0..n-2 (switching after the last stage would leave no later stage to run — the
reference code has no such candidate either).

- Bridges B_{s→t}^k and B_{t→s}^k for every stage, ``adapters.fcfd_bridge`` (3×3 conv +
  BN; stride 2 / transposed 4-2-1 conv with a bias for 2× size differences; + LeakyReLU(0.1)
  when the target stage's output is an after-ReLU feature). The reference decides the
  LeakyReLU per model family (``stage_input == "afterrelu"``: its CIFAR ResNets, ResNet50,
  ShuffleV2); kdbench applies the same rule to its own stage outputs, per target stage,
  found by ``adapters.after_relu_stages``: the CIFAR/ImageNet-style ResNets, VGG,
  ShuffleNetV1/V2 and WRN's last stage (which ends with the final BN-ReLU) are after-ReLU;
  MobileNetV2's linear bottlenecks and WRN's first stages (the raw residual stream) are not.
  (The reference's own VGG/ShuffleV1 splits output pre-ReLU tensors, so it adds none there.)
- Teacher BN (``teacher_bn``). ``train`` (default, the reference: ``main.py`` puts the
  whole meta-model, teacher included, in train mode): the teacher's BN layers normalise
  with batch statistics for z_t, F_t and the student→teacher mixed paths. The method runs
  a private deep copy of the teacher, so the saved teacher and the teacher object the
  caller passed (and its eval-mode outputs) never change; the copy's running statistics
  drift like the reference's and are never read (not part of ``trainable_state()``).
  The reference gives each mixed path its own BN running statistics (``GhostForward``);
  they are written but never read (its validation runs only the pure paths), so here a
  mixed path normalises with its batch statistics and updates no running statistics
  (:func:`frozen_bn_stats`) — the same outputs. ``eval``: the teacher stays in eval mode
  (its running statistics), kdbench's earlier behaviour.
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

import copy
from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.methods.adapters import after_relu_stages, fcfd_bridge
from kdbench.methods.base import Distiller, PairError, register_method

S2T, T2S = "s2t", "t2s"
TEACHER_BN_MODES = ("train", "eval")


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
                    "ramp_epochs", "switch_paths", "teacher_bn")

    @classmethod
    def check_pair(cls, teacher, student, hparams):
        n_t, n_s = teacher.num_stages, student.num_stages
        if n_t != n_s:
            raise PairError(cls.name, getattr(teacher, "arch", "?"), getattr(student, "arch", "?"),
                            f"fcfd needs teacher and student with the same number of stages (as its reference's "
                            f"MetaModel): the teacher has {n_t}, the student {n_s}")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        mode = self.hparams["teacher_bn"]
        if mode not in TEACHER_BN_MODES:
            raise UnknownChoiceError("fcfd hyperparameter teacher_bn", mode, TEACHER_BN_MODES)
        if student.num_stages != teacher.num_stages:
            raise KDBenchError(
                f"fcfd needs teacher and student with the same number of stages: teacher "
                f"{getattr(teacher, 'arch', '?')} has {teacher.num_stages}, student {getattr(student, 'arch', '?')} "
                f"has {student.num_stages}")
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        s_relu = after_relu_stages(student, self.input_size)
        t_relu = after_relu_stages(teacher, self.input_size)
        try:
            self.s2t = nn.ModuleList([fcfd_bridge(s, t, into_after_relu=r) for s, t, r in zip(s_shapes, t_shapes, t_relu)])
            self.t2s = nn.ModuleList([fcfd_bridge(t, s, into_after_relu=r) for s, t, r in zip(s_shapes, t_shapes, s_relu)])
        except KDBenchError as err:
            raise KDBenchError(f"fcfd cannot pair teacher {getattr(teacher, 'arch', '?')} with student "
                               f"{getattr(student, 'arch', '?')} at input size {self.input_size}: {err}") from None
        if mode == "train":
            # a private copy: training-mode BN must never touch the caller's (saved) teacher
            self.teacher = copy.deepcopy(teacher).requires_grad_(False).eval()
        self.num_stages = len(s_shapes)
        #: every switch path: (direction, switch after stage k)
        self.candidates: List[Tuple[str, int]] = [(d, k) for k in range(self.num_stages - 1) for d in (S2T, T2S)]

    def train(self, mode: bool = True):
        super().train(mode)  # the teacher goes to eval mode there
        if self.hparams["teacher_bn"] == "train":
            self.teacher.train(mode)
        return self

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
            with frozen_bn_stats(self.teacher):
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
