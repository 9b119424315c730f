"""cid — Comprehensive, Interventional Distillation (Deng & Zhang, NeurIPS 2021).

- Sample representations: a regressor R (linear d_s -> d_t with bias, trained without
  weight decay) projects the student embedding; L_sample = cid_sample_loss(R f_s, f_t).
- Class representations: L_class = cid_class_loss(f_s, f_t, y) on the raw embedding.
- Context prototypes c_k = Σ_{i: y_i = k} w_i sg(f_s,i) / Σ w_i, w_i = p_t,i[y_i] at
  temperature T, accumulated (detached, float64) over the training steps of one epoch.
  As the reference (Xiang-Deng-DL/CID ``train_student.py``: ``context_old``): the
  prototypes built from epoch e's data are computed at ``on_epoch_end(e)`` into
  ``next_prototypes`` and only swapped in at ``on_epoch_start(e + 1)``; epoch e's
  validation, test predictions and saved model use ``prototypes``, the ones epoch e
  trained with. They are first built at the end of the warm-up (the last warm-up
  epoch's accumulation). A class that got no image in an epoch gets a zero prototype
  (the reference starts every epoch's ``context_new`` at zeros and mixes in the old one
  with ``cu`` = 0, its default and the value of every script).
- Intervention: x̃ = [f_s ; Σ_k P(k|x) c_k], P = softmax(sg(z_s)/T), ŷ = W'x̃ + b' (linear
  2·d_s -> K, trained with the student).
- Loss in the warm-up: kd_weight·kd_loss(z_s, z_t) + sample_weight·L_sample +
  class_weight·L_class (the ``ce`` term is logged as an exact 0 so every epoch logs the
  same terms); afterwards ce_weight·CE(ŷ, y) + kd_weight·kd_loss(z_s, z_t) + the same two
  terms. The spec's ``a`` weighs both CE(ŷ) and kd; it is ``ce_weight`` = ``kd_weight``
  = 1 here. The KD term uses the student's own logits z_s in both phases.
- ``warmup_epochs`` refers to the 240-epoch recipe; it is scaled to the run's length and
  rounded (half up) to whole epochs, at least 1 (prototypes need one epoch of data).

Deployed model (``predict``): ŷ with the prototypes the last epoch trained with; before
an epoch has trained with prototypes (a run no longer than its warm-up, or a model saved
during it) it falls back to the student's own logits z_s (the reference evaluates its
still untrained head there). ``trainable_state()`` holds the student, the regressor, the
intervention head, ``prototypes`` / ``prototypes_ready`` (used in training, deployed)
and ``next_prototypes`` / ``next_ready`` (built, not yet used: a resumed run swaps them in).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import functional as KF
from kdbench.methods.base import Distiller, register_method


@register_method("cid")
class CID(Distiller):
    hparam_names = ("ce_weight", "kd_weight", "sample_weight", "class_weight", "temperature", "warmup_epochs")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        d_s, d_t = student.embedding_dim, teacher.embedding_dim
        self.regressor = nn.Linear(d_s, d_t, bias=True)
        self.intervention = nn.Linear(2 * d_s, num_classes)
        self.register_buffer("prototypes", torch.zeros(num_classes, d_s))
        self.register_buffer("prototypes_ready", torch.zeros((), dtype=torch.bool))
        # built at an epoch's end, used from the next epoch on (the reference's context / context_old)
        self.register_buffer("next_prototypes", torch.zeros(num_classes, d_s))
        self.register_buffer("next_ready", torch.zeros((), dtype=torch.bool))
        # this epoch's weighted sums; reset at every epoch end, so never checkpointed
        self.register_buffer("proto_sum", torch.zeros(num_classes, d_s, dtype=torch.float64), persistent=False)
        self.register_buffer("proto_weight", torch.zeros(num_classes, dtype=torch.float64), persistent=False)

    # -- schedule -----------------------------------------------------------------------
    @property
    def warmup(self) -> int:
        """Warm-up length in whole epochs (scaled from the 240-epoch recipe, >= 1)."""
        return max(1, int(math.floor(self.scaled_epochs(self.hparams["warmup_epochs"]) + 0.5)))

    def intervening(self) -> bool:
        return self.epoch >= self.warmup and bool(self.prototypes_ready)

    # -- pieces -------------------------------------------------------------------------
    def intervene(self, embedding: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ŷ = W'[f_s ; Σ_k P(k|x) c_k] + b', P = softmax(sg(z_s)/T)."""
        p = F.softmax(logits.detach() / self.hparams["temperature"], dim=1)
        context = p @ self.prototypes.to(p.dtype)
        return self.intervention(torch.cat([embedding, context], dim=1))

    @torch.no_grad()
    def accumulate(self, embedding: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add this batch to the epoch's weighted sums (w_i = p_t,i[y_i] at T)."""
        p_t = F.softmax(teacher_logits.double() / self.hparams["temperature"], dim=1)
        w = p_t.gather(1, labels[:, None]).squeeze(1)
        onehot = F.one_hot(labels, self.num_classes).double()  # a matmul: deterministic everywhere
        self.proto_sum += onehot.T @ (w[:, None] * embedding.detach().double())
        self.proto_weight += onehot.T @ w

    @torch.no_grad()
    def update_prototypes(self) -> None:
        """This epoch's weighted means into ``next_prototypes`` (zero for an absent class)."""
        seen = self.proto_weight > 0
        new = self.proto_sum / torch.where(seen, self.proto_weight, torch.ones_like(self.proto_weight))[:, None]
        self.next_prototypes.copy_(torch.where(seen[:, None], new, torch.zeros_like(new)).to(self.next_prototypes.dtype))
        self.next_ready.fill_(True)

    @torch.no_grad()
    def install_prototypes(self) -> None:
        """The prototypes built at the last epoch's end become the ones trained and deployed."""
        if bool(self.next_ready):
            self.prototypes.copy_(self.next_prototypes)
            self.prototypes_ready.fill_(True)
            self.next_ready.fill_(False)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.install_prototypes()

    def on_epoch_end(self, epoch: int) -> None:
        if epoch + 1 >= self.warmup:
            self.update_prototypes()
        self.proto_sum.zero_()
        self.proto_weight.zero_()

    # -- Distiller ---------------------------------------------------------------------
    def extra_modules(self):
        return [self.regressor, self.intervention]

    def param_groups(self, weight_decay: float):
        decayed = [p for p in list(self.student.parameters()) + list(self.intervention.parameters())
                   if p.requires_grad]
        return [{"params": decayed, "weight_decay": weight_decay},
                {"params": [p for p in self.regressor.parameters() if p.requires_grad], "weight_decay": 0.0}]

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        h = self.hparams
        fs, ft = self.features(x)
        if self.training:
            self.accumulate(fs.embedding, ft.logits, y)
        terms = {}
        if self.intervening():
            terms["ce"] = h["ce_weight"] * F.cross_entropy(self.intervene(fs.embedding, fs.logits), y)
        else:
            terms["ce"] = fs.logits.new_zeros(())
        terms["kd"] = h["kd_weight"] * KF.kd_loss(fs.logits, ft.logits, h["temperature"])
        terms["sample"] = h["sample_weight"] * KF.cid_sample_loss(self.regressor(fs.embedding), ft.embedding)
        terms["class"] = h["class_weight"] * KF.cid_class_loss(fs.embedding, ft.embedding, y)
        return terms

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        fs = self.student.forward_features(x)
        if not bool(self.prototypes_ready):
            return fs.logits
        return self.intervene(fs.embedding, fs.logits)
