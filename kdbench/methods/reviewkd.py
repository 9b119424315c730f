"""reviewkd — Distilling Knowledge via Knowledge Review (Chen et al., CVPR 2021).

As mdistiller ``distillers/ReviewKD.py`` (and dvlab-research/ReviewKD ``CIFAR-100``):

- Levels: the student's stage outputs (post-activation, ``STU_PREACT: False``) and its
  pooled embedding (as a C×1×1 map); the teacher's stage outputs *before* their final
  ReLU (:class:`~kdbench.methods.preact.PreactTap`) and its pooled embedding. Student stage
  i meets teacher stage ``stage_pairs`` (same relative depth).
- Attention-based fusion (ABF), from the deepest level up: conv1×1+BN (level channels ->
  mid = min(512, student embedding dim)); except at the deepest level, fuse with the
  previous (deeper) ABF's mid-channel output, nearest-upsampled to this level's size:
  x·a₀ + r·a₁, (a₀, a₁) = sigmoid(conv1×1(cat[x, r])) (with bias); nearest-resize to the
  teacher level's size when it differs; output conv3×3+BN to the teacher's channels.
  conv1/conv2 weights Kaiming-uniform (a = 1), as the reference.
- Loss: ce_weight·CE + reviewkd_weight·min(epoch/warm-up, 1)·hcl_loss(ABF outputs, teacher
  levels), the warm-up (20 of 240 epochs, scaled) on the 1-based epoch as mdistiller.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import Distiller, register_method
from kdbench.methods.preact import PreactTap


class ABF(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual, out_size: Tuple[int, int]):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


@register_method("reviewkd")
class ReviewKD(Distiller):
    hparam_names = ("ce_weight", "reviewkd_weight", "warmup_epochs", "max_mid_channels")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        s_shapes = student.infer_stage_shapes(self.input_size)
        t_shapes = teacher.infer_stage_shapes(self.input_size)
        self.pairs = stage_pairs(len(s_shapes), len(t_shapes))
        in_ch = [c for c, _, _ in s_shapes] + [student.embedding_dim]
        out_ch = [t_shapes[j][0] for _, j in self.pairs] + [teacher.embedding_dim]
        self.out_sizes = [tuple(t_shapes[j][1:]) for _, j in self.pairs] + [(1, 1)]
        mid = min(int(self.hparams["max_mid_channels"]), in_ch[-1])
        n = len(in_ch)
        # abfs[i] serves level i (shallow -> deep); the deepest one does not fuse
        self.abfs = nn.ModuleList([ABF(in_ch[i], mid, out_ch[i], fuse=i < n - 1) for i in range(n)])
        self.teacher_tap = PreactTap(teacher, self.input_size)

    def extra_modules(self):
        return [self.abfs]

    def warmup_factor(self) -> float:
        warmup = self.scaled_epochs(self.hparams["warmup_epochs"])
        return 1.0 if warmup <= 0 else min((self.epoch + 1) / warmup, 1.0)

    def review(self, student_levels: List[torch.Tensor]) -> List[torch.Tensor]:
        """ABF outputs, shallow -> deep, computed from the deepest level up."""
        outs = [None] * len(student_levels)
        residual = None
        for i in reversed(range(len(student_levels))):
            outs[i], residual = self.abfs[i](student_levels[i], residual, self.out_sizes[i])
        return outs

    def teacher_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad(), self.teacher_tap:
            ft = self.teacher.forward_features(x)
            pre = self.teacher_tap.preacts(ft.stages)
        return [pre[j] for _, j in self.pairs] + [ft.embedding[:, :, None, None]], ft

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        fs = self.student.forward_features(x)
        t_levels, _ = self.teacher_levels(x)
        s_levels = list(fs.stages) + [fs.embedding[:, :, None, None]]
        hcl = KF.hcl_loss(self.review(s_levels), t_levels)
        h = self.hparams
        return {"ce": h["ce_weight"] * F.cross_entropy(fs.logits, y),
                "reviewkd": h["reviewkd_weight"] * self.warmup_factor() * hcl}
