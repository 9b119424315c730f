"""vanilla: the student trained alone with cross-entropy (also the teacher recipe)."""
from __future__ import annotations

import torch.nn.functional as F

from kdbench.methods.base import Distiller, register_method


@register_method("vanilla")
class Vanilla(Distiller):
    needs_teacher = False

    def loss(self, batch):
        return {"ce": F.cross_entropy(self.student(batch["image"]), batch["label"])}
