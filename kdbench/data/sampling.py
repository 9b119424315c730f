"""Subsets of in-memory splits drawn by a fixed seed."""
from __future__ import annotations

import torch

from kdbench.data.base import Split
from kdbench.errors import KDBenchError


def few_shot(split: Split, shots_per_class: int, seed: int = 0) -> Split:
    """``shots_per_class`` images of every class (the ``student_shots`` regime), drawn
    by ``seed``; rows keep the split's order."""
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for c in torch.unique(split.labels).tolist():
        rows = torch.nonzero(split.labels == c).flatten()
        if len(rows) < shots_per_class:
            raise KDBenchError(f"student_shots={shots_per_class} but class {c} has only {len(rows)} training images")
        picks.append(rows[torch.randperm(len(rows), generator=g)[:shots_per_class]])
    return split.subset(torch.sort(torch.cat(picks)).values)
