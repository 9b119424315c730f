"""The training recipe's optimizer and learning-rate schedule, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` in its constructor and in every
``step`` (to mark graph breaks for ``torch.compile``): about 1.7 s per process here, more
than half of a job's fixed cost, for a compiler kdbench does not use. ``SGD`` below is the
update of ``torch.optim.SGD`` (momentum, Nesterov, per-group weight decay, no dampening),
written with the same tensor operations in the same order, so its numbers are bit-identical
to torch's (``tests/test_engine.py`` checks both of torch's code paths). The schedules are
the closed forms of ``MultiStepLR`` / ``CosineAnnealingLR`` evaluated per epoch.
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


def learning_rate(epoch: int, *, base_lr: float, schedule: str, epochs: int,
                  milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """The learning rate of epoch ``epoch`` (0-based).

    ``step``: ``base_lr * gamma ** (number of milestones <= epoch)`` (MultiStepLR);
    ``cosine``: ``base_lr * (1 + cos(pi * epoch / epochs)) / 2`` (CosineAnnealingLR,
    eta_min 0); ``constant``: ``base_lr``."""
    if schedule == "step":
        return base_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch)
    if schedule == "cosine":
        return base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}; valid: step, cosine, constant")
