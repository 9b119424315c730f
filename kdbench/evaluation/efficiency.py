"""Model size and cost: parameters and FLOPs per image."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable

import torch


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@contextlib.contextmanager
def _dispatch_without_dynamo_import(mode_cls):
    """Run a ``TorchDispatchMode`` subclass without importing ``torch._dynamo`` (over a
    second per process). torch wraps every mode's ``__torch_dispatch__`` in
    ``torch._disable_dynamo``, whose wrapper imports dynamo on its first call only to
    build ``torch._dynamo.disable(fn)``, which it caches on the raw function as
    ``__dynamo_disable``; eager code outside ``torch.compile`` runs the raw function
    either way. While dynamo is not loaded, the raw function stands in for its own
    disabled version, for the duration of the block only. Any other torch: a no-op (the
    import then just happens, as before)."""
    raw = getattr(mode_cls.__dict__.get("__torch_dispatch__"), "__wrapped__", None)
    patch = raw is not None and "torch._dynamo" not in sys.modules and not hasattr(raw, "__dynamo_disable")
    if patch:
        setattr(raw, "__dynamo_disable", raw)
    try:
        yield
    finally:
        if patch and getattr(raw, "__dynamo_disable", None) is raw:
            delattr(raw, "__dynamo_disable")


@torch.no_grad()
def flops_per_image(predict: Callable, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on one image (1×C×H×W), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs;
    convolutions and matrix products, which dominate, are counted)."""
    from torch.utils import flop_counter

    if image.dim() == 3:
        image = image[None]
    counter = flop_counter.FlopCounterMode(display=False)
    with _dispatch_without_dynamo_import(getattr(flop_counter, "_FlopCounterMode", type(None))), counter:
        predict(image[:1])
    return int(counter.get_total_flops())
