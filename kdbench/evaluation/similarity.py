"""FSS and RS (UniCAM paper): distance correlations between feature matrices.

Features are flattened (n × C·h·w) and computed in float64 on the fixed evaluation
subset; the math is :func:`kdbench.functional.distance_correlation` and
:func:`kdbench.functional.relevance_score`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from kdbench import functional as KF


def _flat(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).double()


def fss_stages(student_stages: Sequence[Tensor], teacher_stages: Sequence[Tensor]) -> List[float]:
    """Per student stage i: distance_correlation(student stage i, teacher stage at the
    same relative depth) (``methods.adapters.stage_pairs``)."""
    from kdbench.methods.adapters import stage_pairs

    return [float(KF.distance_correlation(_flat(student_stages[i]), _flat(teacher_stages[j])))
            for i, j in stage_pairs(len(student_stages), len(teacher_stages))]


def relevance(x_feat: Tensor, y_feat: Tensor, labels: Tensor, num_classes: Optional[int] = None) -> float:
    """relevance_score(x, y, one-hot labels): the task relevance of what x has and y has
    not. ``rs`` = relevance(student, base), ``rs_residual`` = relevance(base, student)."""
    return float(KF.relevance_score(_flat(x_feat), _flat(y_feat), torch.as_tensor(labels).long(),
                                    num_classes=num_classes))
