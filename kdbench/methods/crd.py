"""crd — Contrastive Representation Distillation (Tian et al., ICLR 2020).

As the references (HobbitLong/RepDistiller ``crd/criterion.py``, ``crd/memory.py``,
``dataset/cifar100.py``; megvii-research/mdistiller ``distillers/CRD.py``):

- Embeddings: v_s = N(W_s f_s + b_s), v_t = N(W_t f_t + b_t), f the pooled penultimate
  features, N the L2 normalisation x/‖x‖ (no epsilon); W_s, W_t trained with the student.
- Memory: two banks over the training split (one row per training image, ``batch["index"]``),
  ``memory_student`` and ``memory_teacher``, initialised U(−s, s), s = 1/√(feat_dim/3).
- Samples ("exact" mode): for image i the positive is row i itself, the ``nce_k``
  negatives are drawn uniformly from the rows of *other classes*, without replacement when
  there are at least ``nce_k`` of them, with replacement otherwise (``np.random.choice(...,
  replace=k > len(cls_negative))``). Drawn here with the global torch RNG, batched.
- Scores: teacher anchor vs student bank, exp(⟨memory_student[j], v_t⟩ / τ), and student
  anchor vs teacher bank, exp(⟨memory_teacher[j], v_s⟩ / τ), bank rows detached; each side
  divided by its normalisation constant Z = mean(first batch's scores)·N, fixed at the first
  step and kept (the ``z_norm`` buffer).
- Loss: crd_weight·(NCE(student-anchor scores) + NCE(teacher-anchor scores)),
  :func:`kdbench.functional.crd_nce_loss`, plus ce_weight·CE.
- After the scores, the positive rows are updated (no gradient): row i ← N(m·row i +
  (1 − m)·v), m = ``nce_momentum``, the student bank with v_s, the teacher bank with v_t.

The banks and Z are created by ``prepare`` (they need the training split's size and
labels) and are part of the run's state, so a resumed run continues with them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.base import Distiller, register_method


class Embed(nn.Module):
    """Linear projection followed by the references' L2 normalisation (x / ‖x‖)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def _l2_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


@register_method("crd")
class CRD(Distiller):
    hparam_names = ("ce_weight", "crd_weight", "feat_dim", "nce_k", "nce_momentum", "nce_temperature")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        d = int(self.hparams["feat_dim"])
        self.embed_student = Embed(student.embedding_dim, d)
        self.embed_teacher = Embed(teacher.embedding_dim, d)
        self.n_data = 0

    # -- memory -------------------------------------------------------------------------
    def prepare(self, ctx) -> None:
        labels = torch.as_tensor(ctx.train_split.labels).long()
        n, d = len(labels), int(self.hparams["feat_dim"])
        if n < 2 or int(torch.unique(labels).numel()) < 2:
            raise KDBenchError(f"crd needs a training split with at least 2 classes, got {n} images "
                               f"of {int(torch.unique(labels).numel())} class(es)")
        dev = next(self.student.parameters()).device
        stdv = 1.0 / math.sqrt(d / 3)
        self.n_data = n
        self.register_buffer("memory_student", (torch.rand(n, d) * (2 * stdv) - stdv).to(dev))
        self.register_buffer("memory_teacher", (torch.rand(n, d) * (2 * stdv) - stdv).to(dev))
        self.register_buffer("z_norm", torch.full((2,), -1.0, device=dev))
        # the rows of each class, contiguous: for drawing other-class negatives (not state)
        order = torch.sort(labels, stable=True).indices
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        starts = torch.cumsum(counts, 0) - counts
        self.register_buffer("_labels", labels.to(dev), persistent=False)
        self.register_buffer("_order", order.to(dev), persistent=False)
        self.register_buffer("_class_start", starts.to(dev), persistent=False)
        self.register_buffer("_class_count", counts.to(dev), persistent=False)

    def sample_indices(self, index: torch.Tensor) -> torch.Tensor:
        """B×(1+K) bank rows: the image's own row, then K negatives of other classes."""
        k = int(self.hparams["nce_k"])
        y = self._labels[index]
        start, count = self._class_start[y], self._class_count[y]
        avail = self.n_data - count  # other-class rows per image
        b, dev = index.shape[0], index.device
        replace = avail < k
        neg = torch.empty(b, k, dtype=torch.long, device=dev)
        if bool(replace.any()):  # uniform with replacement over the other classes' rows
            u = (torch.rand(b, k, device=dev) * avail[:, None]).long().clamp_(max=(avail - 1)[:, None])
            pos = u + count[:, None] * (u >= start[:, None])
            neg = torch.where(replace[:, None], self._order[pos], neg)
        if not bool(replace.all()):  # k distinct rows: the k smallest of random keys
            keys = torch.rand(b, self.n_data, device=dev)
            keys = keys.masked_fill(self._labels[None, :] == y[:, None], 2.0)
            distinct = torch.topk(keys, k, dim=1, largest=False, sorted=True).indices
            neg = torch.where(replace[:, None], neg, distinct)
        return torch.cat([index[:, None], neg], dim=1)

    def contrast(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor):
        """Normalised scores (student anchor, teacher anchor), then the bank update."""
        idx = self.sample_indices(index)
        b, k1 = idx.shape
        tau = float(self.hparams["nce_temperature"])
        w_s = self.memory_student[idx.reshape(-1)].reshape(b, k1, -1)
        w_t = self.memory_teacher[idx.reshape(-1)].reshape(b, k1, -1)
        out_t = torch.exp(torch.bmm(w_s, v_t[:, :, None]).squeeze(2) / tau)  # teacher anchor
        out_s = torch.exp(torch.bmm(w_t, v_s[:, :, None]).squeeze(2) / tau)  # student anchor
        with torch.no_grad():
            if float(self.z_norm[0]) < 0:
                self.z_norm[0] = out_s.mean() * self.n_data
            if float(self.z_norm[1]) < 0:
                self.z_norm[1] = out_t.mean() * self.n_data
        out_s = out_s / self.z_norm[0]
        out_t = out_t / self.z_norm[1]
        if self.training:
            m = float(self.hparams["nce_momentum"])
            with torch.no_grad():
                self.memory_student[index] = _l2_rows(self.memory_student[index] * m + v_s.detach() * (1 - m))
                self.memory_teacher[index] = _l2_rows(self.memory_teacher[index] * m + v_t.detach() * (1 - m))
        return out_s, out_t

    # -- Distiller ---------------------------------------------------------------------
    def extra_modules(self):
        return [self.embed_student, self.embed_teacher]

    def loss(self, batch):
        if not self.n_data:
            raise KDBenchError("crd: prepare(ctx) must run first (it builds the memory banks)")
        x, y, index = batch["image"], batch["label"], batch["index"]
        fs, ft = self.features(x)
        v_s, v_t = self.embed_student(fs.embedding), self.embed_teacher(ft.embedding)
        out_s, out_t = self.contrast(v_s, v_t, index)
        crd = KF.crd_nce_loss(out_s, self.n_data) + KF.crd_nce_loss(out_t, self.n_data)
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(fs.logits, y),
                "crd": self.hparams["crd_weight"] * crd}
