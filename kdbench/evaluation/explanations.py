"""Explanation metrics: e2KD's explanation similarity and the energy pointing game."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kdbench import functional as KF


def expl_sim(teacher_cams: Tensor, student_cams: Tensor) -> float:
    """Mean over images of cos(cam_T(x, ŷ_T), cam_S(x, ŷ_T)) (both maps for the teacher's
    top-1 class; computing them is the caller's job)."""
    return float(KF.explanation_cosine(teacher_cams.double(), student_cams.double()).mean())


def epg(cams: Tensor, masks: Optional[Tensor]) -> Optional[float]:
    """Mean energy pointing game of maps against boolean foreground masks; None (not
    applicable) without masks."""
    if masks is None:
        return None
    if masks.shape != cams.shape:
        raise ValueError(f"maps {tuple(cams.shape)} and masks {tuple(masks.shape)} differ in shape")
    return float(KF.energy_pointing_game(cams.double(), masks.bool()).mean())
