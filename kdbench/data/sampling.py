"""Per-class subsets of a split (the ``student_shots`` option: limited-data students)."""
from __future__ import annotations

import torch

from kdbench.errors import KDBenchError


class FewShotError(KDBenchError, ValueError):
    """A class has fewer images than ``student_shots`` asks for."""


def few_shot_indices(labels: torch.Tensor, shots_per_class: int, seed: int) -> torch.Tensor:
    """Sorted int64 row indices: ``shots_per_class`` rows of every class present in
    ``labels``, drawn by a ``torch.Generator`` seeded with ``seed`` (classes in increasing
    order). Raises ``FewShotError`` (a ``KDBenchError`` and a ``ValueError``) naming the
    class when it has fewer rows than asked."""
    shots = int(shots_per_class)
    if shots < 1:
        raise ValueError(f"shots_per_class must be >= 1, got {shots_per_class}")
    labels = labels.detach().cpu().long()
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < shots:
            raise FewShotError(f"few-shot sampling: class {c} has {len(idx)} images in the split, "
                               f"fewer than the {shots} per class asked (student_shots)")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.sort(torch.cat(picked)).values


def few_shot(split, shots_per_class: int, seed: int = 0):
    """A ``Split``/``FileSplit`` with ``shots_per_class`` images of each class, drawn by a
    fixed ``seed`` (rows kept in their original order). Use ``few_shot_indices`` for the
    row indices (e.g. to subset per-image metadata the same way)."""
    return split.subset(few_shot_indices(split.labels, shots_per_class, seed))
