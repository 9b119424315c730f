"""Model size and cost: parameters and FLOPs per image."""
from __future__ import annotations

from typing import Callable

import torch


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def flops_per_image(predict: Callable, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on one image (1×C×H×W), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs;
    convolutions and matrix products, which dominate, are counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    if image.dim() == 3:
        image = image[None]
    counter = FlopCounterMode(display=False)
    with counter:
        predict(image[:1])
    return int(counter.get_total_flops())
