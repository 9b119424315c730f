"""e2kd — Explanation-Enhanced KD (Parchami-Araghi et al., ECCV 2024), e2kd_frozen and the
e2kd_kdmatched ablation.

Reference: m-parchami/GoodTeachersExplain, ``bcos/distillation_methods/TeachersExplain.py``
(``TeachersExplainCriterion``, ``explanation_aware_forward``) and
``bcos/experiments/ImageNet/final_live/experiment_parameters.py`` (the sweeps).

Loss: ce_weight·CE + kd_weight·T²·KL(p_t ‖ p_s) + explanation_weight·L_exp (the
reference's ``gt_logit_loss_coef·CE + exp_loss_coef·L_exp + teacher_logit_loss_coef·
KL.sum(-1).mean()·T²``). The paper's form, e2kd's params, has no CE (every reference sweep:
``gt_logit_loss_coef = 0``, KD weight 1). ``e2kd_kdmatched`` is the same class with kd's
weights (params/methods/kd.yaml) + λ·L_exp, so its difference from kd isolates the
explanation term. With

    L_exp = mean_i [1 − cos(flatten(cam_S,i), flatten(cam_T,i))]

both Grad-CAM maps (ReLU(Σ_k mean_hw(∂y_c/∂A_k)·A_k), the reference's ``GRAD_CAM_POS``)
taken on the last stage (the reference's pre-pool ``features``) for the **teacher's**
top-1 class (``exp_of='top1'``) and resized (bilinear) to the input size; no further
normalisation (the cosine is scale-invariant). The student's map keeps its graph
(``create_graph=True``: the loss trains through the Grad-CAM weights, i.e. the head too);
the teacher's map is detached. The student is in train mode while training (BN batch
statistics, as in its logits). A map that is all zero has cosine 0
(``explanation_cosine``), i.e. loss 1 and no gradient for that image (the reference's
``F.cosine_similarity`` gives 0 there too).

e2kd_frozen: the paper's "frozen explanations". ``prepare`` runs the teacher once over
the un-augmented, normalised training images (batched) and stores its logits (float32,
N×K, looked up by ``batch["index"]``) and its Grad-CAM maps at input size (float16,
N×H×W, each map divided by its maximum: the cosine is scale-invariant, so the loss is
unchanged and float16 keeps ~3 significant digits). The maps go to the training loader as
the aligned tensor ``teacher_cam`` (``aligned_tensors()``, also ``ctx.info["aligned"]``),
which crops/flips them exactly like their images. During training the teacher never
runs. As the spec says, the stored logits (and so the top-1 class the student's map is
taken for, and the KD target) belong to the *un-augmented* image while the student sees
its augmented version. The stored tables are not part of ``trainable_state()`` (100 MB
for CIFAR); a resumed run calls ``prepare`` again, which is deterministic.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from kdbench import functional as KF
from kdbench.errors import KDBenchError
from kdbench.methods.base import TrainContext, register_method
from kdbench.methods.kd import KD


def teacher_gradcam(teacher: nn.Module, x: torch.Tensor, size: Optional[Sequence[int]] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's logits (detached) and its Grad-CAM maps (detached, B×h×w or
    resized to ``size``) on the last stage for its own top-1 class. Only the head is
    differentiated: the stages run without a graph."""
    with torch.no_grad():
        last = teacher.forward_features(x).stages[-1]
    last = last.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = teacher.forward_from(teacher.num_stages - 1, last)
        cam = KF.gradcam(last, logits, logits.detach().argmax(dim=1), size=size)
    return logits.detach(), cam


@register_method("e2kd")
class E2KD(KD):
    hparam_names = KD.hparam_names + ("explanation_weight",)

    def teacher_targets(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits and the teacher's Grad-CAM maps at input size."""
        x = batch["image"]
        return teacher_gradcam(self.teacher, x, size=x.shape[-2:])

    def explanation_loss(self, stage_output: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor,
                         teacher_cam: torch.Tensor) -> torch.Tensor:
        """mean(1 − cos(cam_S, cam_T)), the student's map differentiable."""
        cam_s = KF.gradcam(stage_output, logits, classes, create_graph=True, size=teacher_cam.shape[-2:])
        return (1.0 - KF.explanation_cosine(cam_s, teacher_cam.to(cam_s.dtype))).mean()

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        fs = self.student.forward_features(x)
        z_t, cam_t = self.teacher_targets(batch)
        terms = self.logit_terms(fs.logits, z_t, y)
        top1 = z_t.argmax(dim=1)
        terms["explanation"] = self.hparams["explanation_weight"] * self.explanation_loss(
            fs.stages[-1], fs.logits, top1, cam_t)
        return terms


@register_method("e2kd_kdmatched")
class E2KDKDMatched(E2KD):
    """e2kd with kd's weights (the ablation): the loss is e2kd's; only the params differ."""


@register_method("e2kd_frozen")
class E2KDFrozen(E2KD):
    #: the per-image tensors the training loader must carry (see ``aligned_tensors``)
    aligned_keys = ("teacher_cam",)

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        self.stored_logits: Optional[torch.Tensor] = None  # N×K float32, on the training device
        self.stored_cams: Optional[torch.Tensor] = None  # N×H×W float16, CPU

    @torch.no_grad()
    def prepare(self, ctx: TrainContext) -> None:
        n = len(ctx.train_split)
        logits = cams = None
        seen = torch.zeros(n, dtype=torch.bool)
        for batch in ctx.make_loader(ctx.train_split, ctx.batch_size, train=False):
            x = batch["image"]
            z, cam = teacher_gradcam(self.teacher, x, size=x.shape[-2:])
            if logits is None:
                logits = torch.zeros(n, z.shape[1], dtype=torch.float32, device=z.device)
                cams = torch.zeros(n, *cam.shape[-2:], dtype=torch.float16)
            peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
            idx = batch["index"].long()
            logits[idx.to(z.device)] = z.float()
            cams[idx.cpu()] = (cam / peak[:, None, None]).to(torch.float16).cpu()
            seen[idx.cpu()] = True
        if logits is None or not bool(seen.all()):
            raise KDBenchError(f"e2kd_frozen: the loader gave {int(seen.sum())} of {n} training images")
        self.stored_logits, self.stored_cams = logits, cams
        ctx.info["aligned"] = self.aligned_tensors()

    def aligned_tensors(self) -> Dict[str, torch.Tensor]:
        return {} if self.stored_cams is None else {"teacher_cam": self.stored_cams}

    def teacher_targets(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.stored_logits is None:
            raise KDBenchError("e2kd_frozen: prepare(ctx) must run before training (it stores the teacher's "
                               "logits and maps)")
        if "teacher_cam" not in batch:
            raise KDBenchError("e2kd_frozen: the batch has no 'teacher_cam'; build the training loader with "
                               "aligned=distiller.aligned_tensors()")
        idx = batch["index"].long().to(self.stored_logits.device)
        z_t = self.stored_logits[idx].to(batch["image"].device)
        return z_t, batch["teacher_cam"].to(batch["image"].device, torch.float32)
