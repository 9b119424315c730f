"""The initialisation stage of the two-stage reference protocols (RepDistiller
``helper/pretrain.py`` ``init``): fsp and ab pre-train the student's feature layers, ft
pre-trains its paraphraser, before the classification training starts.

:class:`InitStage` is a Distiller mixin. ``prepare`` keeps the training context; the stage
itself runs at the start of the first training epoch (``on_epoch_start``), so its cost is
part of that epoch's time and therefore of the row's ``train_s``. It runs
``init_epochs`` epochs (given for the 240-epoch recipe, scaled to the run's length, whole
epochs, at least 1; 0 turns the stage off; the reference: 30) of SGD (``init_lr``, ``init_momentum``,
``init_weight_decay``; its own optimizer, as the reference) over the augmented training
loader, on a batch stream of its own (loader epochs ``INIT_EPOCH_BASE + e``). Modes as the
reference: everything in eval mode except the modules the stage trains. The
``init_done`` buffer is part of the trainable state: a run resumed from a checkpoint
written after the stage does not repeat it (its trained weights are in the checkpoint);
a run interrupted inside the stage re-runs it identically. The stage's wall time is
kept in ``init_stage_s`` (a buffer, so a resumed run still reports it).
"""
from __future__ import annotations

import math
import time
from typing import List

import torch
from torch import nn

from kdbench.errors import KDBenchError
from kdbench.methods.base import TrainContext
from kdbench.optim import SGD

#: loader epoch of the stage's first epoch (far from the main training's 0, 1, ...)
INIT_EPOCH_BASE = 1_000_000
INIT_HPARAMS = ("init_epochs", "init_lr", "init_momentum", "init_weight_decay")


class InitStage:
    """Mixin (before Distiller in the bases): subclasses define ``init_modules()`` (the
    modules the stage trains) and ``init_loss(batch)`` (a scalar)."""

    def _setup_init_stage(self) -> None:
        self.register_buffer("init_done", torch.zeros((), dtype=torch.bool))
        self.register_buffer("init_stage_s", torch.zeros((), dtype=torch.float64))
        self._init_ctx = None

    @property
    def num_init_epochs(self) -> int:
        """``init_epochs`` scaled to the run (whole epochs, at least 1); 0 turns the stage off."""
        if float(self.hparams["init_epochs"]) <= 0:
            return 0
        return max(1, int(math.floor(self.scaled_epochs(self.hparams["init_epochs"]) + 0.5)))

    def init_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def init_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, ctx: TrainContext) -> None:
        super().prepare(ctx)
        self._init_ctx = ctx

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if not bool(self.init_done):
            self.run_init_stage()

    def run_init_stage(self) -> None:
        ctx = self._init_ctx
        if ctx is None:
            raise KDBenchError(f"{self.name}: prepare(ctx) must run before training (it gives the "
                               "initialisation stage its data)")
        h = self.hparams
        t0 = time.perf_counter()
        modules = self.init_modules()
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        opt = SGD([{"params": params}], lr=float(h["init_lr"]), momentum=float(h["init_momentum"]),
                  weight_decay=float(h["init_weight_decay"]))
        loader = ctx.make_loader(ctx.train_split, ctx.batch_size, train=True)
        was = self.training
        self.eval()
        for m in modules:
            m.train()
        try:
            for e in range(self.num_init_epochs):
                loader.set_epoch(INIT_EPOCH_BASE + e)
                for batch in loader:
                    loss = self.init_loss(batch)
                    if not bool(torch.isfinite(loss)):
                        raise KDBenchError(f"{self.name}: the initialisation stage's loss is {float(loss)} "
                                           f"(epoch {e}); lower init_lr")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            opt.zero_grad()  # no stale gradients of the stage left on its modules
            self.init_done.fill_(True)
        finally:
            self.train(was)
        self.init_stage_s.fill_(time.perf_counter() - t0)

    def artifacts(self):
        out = dict(super().artifacts())
        if bool(self.init_done):
            out["init_stage"] = {"epochs": self.num_init_epochs, "seconds": round(float(self.init_stage_s), 3)}
        return out
