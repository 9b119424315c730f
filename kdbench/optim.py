"""The training recipe's optimizer and learning-rate schedule, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` in its constructor and in every
``step`` (to mark graph breaks for ``torch.compile``): about 1.7 s per process here, more
than half of a job's fixed cost, for a compiler kdbench does not use. ``SGD`` below is the
update of ``torch.optim.SGD`` (momentum, Nesterov, per-group weight decay, no dampening),
written with the same tensor operations in the same order, so its numbers are bit-identical
to torch's (``tests/test_engine.py`` checks both of torch's code paths). The schedules are
the closed forms of ``MultiStepLR`` / ``CosineAnnealingLR`` evaluated per epoch, and of
``OneCycleLR`` (its defaults, momentum not cycled) evaluated per optimiser step.
"""
from __future__ import annotations

import bisect
import math
from typing import Dict, List, Optional, Sequence

import torch


class SGD:
    """Stochastic gradient descent with momentum over parameter groups.

    ``param_groups``: dicts with ``params`` and optionally ``weight_decay`` (the recipe's
    otherwise); every group gets ``lr`` (set per epoch by the trainer via ``set_lr``).
    The update per parameter, as in ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buf = g (first step) | momentum * buf + g
        g = g + momentum * buf (nesterov) | buf
        p = p - lr * g
    """

    def __init__(self, param_groups: Sequence[dict], *, lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError(f"nesterov needs momentum > 0 (got momentum={momentum})")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.param_groups: List[dict] = []
        for group in param_groups:
            params = list(group["params"])
            self.param_groups.append({"params": params, "lr": float(group.get("lr", lr)),
                                      "weight_decay": float(group.get("weight_decay", weight_decay))})
        self.momentum_buffers: List[List[Optional[torch.Tensor]]] = [
            [None] * len(g["params"]) for g in self.param_groups]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = float(lr)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group, buffers in zip(self.param_groups, self.momentum_buffers):
            wd, lr = group["weight_decay"], group["lr"]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                grad = p.grad
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                if self.momentum != 0:
                    buf = buffers[i]
                    if buf is None:
                        buf = buffers[i] = torch.clone(grad).detach()
                    else:
                        buf.mul_(self.momentum).add_(grad)
                    grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(grad, alpha=-lr)

    def state_dict(self) -> Dict[str, object]:
        """Momentum buffers (tensors or None), loadable with ``weights_only=True``. The lr is
        not state: the trainer sets it from the schedule at every epoch start."""
        return {"momentum_buffers": [list(b) for b in self.momentum_buffers]}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        buffers = state["momentum_buffers"]
        shapes = [len(g["params"]) for g in self.param_groups]
        if [len(b) for b in buffers] != shapes:
            raise ValueError(f"optimizer state has groups of sizes {[len(b) for b in buffers]}, "
                             f"this optimizer {shapes}")
        for group, saved in zip(self.param_groups, buffers):
            for p, buf in zip(group["params"], saved):
                if buf is not None and buf.shape != p.shape:
                    raise ValueError(f"momentum buffer of shape {tuple(buf.shape)} for a parameter "
                                     f"of shape {tuple(p.shape)}")
        self.momentum_buffers = [[None if b is None else b.to(p.device) for p, b in zip(g["params"], saved)]
                                 for g, saved in zip(self.param_groups, buffers)]


#: the schedules set per optimiser step (the others once per epoch)
PER_STEP_SCHEDULES = ("onecycle",)
#: torch.optim.lr_scheduler.OneCycleLR's defaults: the share of steps spent warming up, the
#: start lr (base_lr / ONECYCLE_DIV) and the final one (start lr / ONECYCLE_FINAL_DIV)
ONECYCLE_PCT_START, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def learning_rate(epoch: float, *, base_lr: float, schedule: str, epochs: int,
                  milestones: Sequence[int] = (), gamma: float = 0.1, total_steps: int = 0) -> float:
    """The learning rate at ``epoch`` (0-based; per-epoch schedules take whole epochs,
    ``onecycle`` the optimiser step's index as ``epoch`` with ``total_steps`` steps in all).

    ``step``: ``base_lr * gamma ** (number of milestones <= epoch)`` (MultiStepLR);
    ``cosine``: ``base_lr * (1 + cos(pi * epoch / epochs)) / 2`` (CosineAnnealingLR,
    eta_min 0); ``constant``: ``base_lr``; ``onecycle``: OneCycleLR's learning rate with its
    defaults (cosine from base_lr/25 up to base_lr over the first 30 % of the steps, then
    cosine down to base_lr/25/1e4; momentum is not cycled)."""
    if schedule == "step":
        return base_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch)
    if schedule == "cosine":
        return base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "constant":
        return base_lr
    if schedule == "onecycle":
        return _onecycle(int(epoch), base_lr, total_steps)
    raise ValueError(f"unknown schedule {schedule!r}; valid: step, cosine, constant, onecycle")


def _onecycle(step: int, max_lr: float, total_steps: int) -> float:
    """OneCycleLR's two cosine phases (its ``three_phase=False``), at step ``step``: the
    phase ends at steps pct_start*total-1 and total-1, as in torch."""
    if total_steps < 2:
        raise ValueError(f"onecycle needs at least 2 steps (got total_steps={total_steps})")
    initial, final = max_lr / ONECYCLE_DIV, max_lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
    warm_end = float(ONECYCLE_PCT_START * total_steps) - 1
    if step <= warm_end:
        start, end, pct = initial, max_lr, step / warm_end if warm_end > 0 else 1.0
    else:
        start, end, pct = max_lr, final, (step - warm_end) / (total_steps - 1 - warm_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)
