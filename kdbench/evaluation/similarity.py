"""FSS and RS (UniCAM paper): distance correlations between feature matrices.

Features are flattened (n × C·h·w) and computed in float64 on the fixed evaluation
subset. ``evaluation.fss_estimator`` picks the estimator (the record's ``fss_estimator``
says which one produced its numbers):

- ``u_centered`` (kdbench's default): the bias-corrected U-centred squared distance
  correlation over the whole subset (:func:`kdbench.functional.distance_correlation`;
  RS: :func:`kdbench.functional.relevance_score`). Unbiased: independent features give
  ≈ 0 whatever their dimension.
- ``v_normalized``: the current UniCAM reference (gadhane/UniCAM ``rsfss_common.py``):
  FSS is the biased V-statistic on L2-normalised rows
  (:func:`kdbench.functional.v_distance_correlation`); its RS (``P_DC``) stays U-centred,
  so ``rs`` is the ``u_centered`` one. High-dimensional independent features score ≈ 0.94.
- ``u_centered_batch5``: the paper-era UniCAM code's form (Nov 2024
  ``PetImages/main_RSFSS.py``): U-centred FSS and RS per batch of 5 images, averaged over
  the batches (:func:`kdbench.functional.batched_distance_correlation`,
  :func:`kdbench.functional.batched_relevance_score`). The evaluation subset is a fixed
  random permutation of the test split, so its consecutive 5-image chunks are random
  batches. That code also fed each model its own HiResCAM + ROAD-perturbed
  ("localised") images; kdbench feeds the plain images (not reproduced).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from kdbench import functional as KF
from kdbench.errors import UnknownChoiceError
from kdbench.methods.adapters import stage_pairs

FSS_ESTIMATORS = ("u_centered", "v_normalized", "u_centered_batch5")
DEFAULT_FSS_ESTIMATOR = "u_centered"
#: the paper-era code's DataLoader batch size
PAPER_BATCH = 5


def check_estimator(estimator: str) -> str:
    if estimator not in FSS_ESTIMATORS:
        raise UnknownChoiceError("evaluation.fss_estimator", estimator, FSS_ESTIMATORS)
    return estimator


def _flat(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).double()


class DistanceCache:
    """The U-centred distance matrices (float64) of feature tensors, each computed once: a
    student stage enters its FSS and both RS directions, the base stages and the labels
    every RS. Keyed by the tensor object (held, so its id stays unique); use one cache
    per evaluation, over tensors that are not modified in place."""

    def __init__(self):
        self._matrices: Dict[Tuple, Tuple[object, Tensor]] = {}

    def _get(self, key: Tuple, owner: object, compute) -> Tensor:
        hit = self._matrices.get(key)
        if hit is None or hit[0] is not owner:
            hit = self._matrices[key] = (owner, compute())
        return hit[1]

    def features(self, x: Tensor) -> Tensor:
        return self._get(("features", id(x)), x, lambda: KF.u_centered_distances(_flat(x)))

    def labels(self, labels: Tensor, like: Tensor, num_classes: Optional[int]) -> Tensor:
        return self._get(("labels", id(labels), num_classes), labels,
                         lambda: KF.label_distances(torch.as_tensor(labels).long(), _flat(like), num_classes))


def fss(x: Tensor, y: Tensor, estimator: str = DEFAULT_FSS_ESTIMATOR, cache: Optional[DistanceCache] = None) -> float:
    """FSS of two feature matrices (n × ...) with the named estimator (``cache``: reuse
    the U-centred matrices of the default estimator)."""
    check_estimator(estimator)
    if estimator == "u_centered":
        KF.check_paired_samples(x, y)
        cache = cache or DistanceCache()
        return float(KF.distance_correlation_from_distances(cache.features(x), cache.features(y)))
    x, y = _flat(x), _flat(y)
    if estimator == "v_normalized":
        return float(KF.v_distance_correlation(x, y))
    return float(KF.batched_distance_correlation(x, y, PAPER_BATCH))


def fss_stages(student_stages: Sequence[Tensor], teacher_stages: Sequence[Tensor],
               estimator: str = DEFAULT_FSS_ESTIMATOR, cache: Optional[DistanceCache] = None) -> List[float]:
    """Per student stage i: FSS(student stage i, teacher stage at the same relative depth)
    (``methods.adapters.stage_pairs``)."""
    return [fss(student_stages[i], teacher_stages[j], estimator, cache)
            for i, j in stage_pairs(len(student_stages), len(teacher_stages))]


def relevance(x_feat: Tensor, y_feat: Tensor, labels: Tensor, num_classes: Optional[int] = None,
              estimator: str = DEFAULT_FSS_ESTIMATOR, cache: Optional[DistanceCache] = None) -> float:
    """relevance_score(x, y, one-hot labels): the task relevance of what x has and y has
    not. ``rs`` = relevance(student, base), ``rs_residual`` = relevance(base, student).
    ``u_centered_batch5`` averages it over batches of 5; the other two estimators use the
    whole subset (the current reference's RS is U-centred)."""
    check_estimator(estimator)
    if estimator == "u_centered_batch5":
        x, y, lab = _flat(x_feat), _flat(y_feat), torch.as_tensor(labels).long()
        return float(KF.batched_relevance_score(x, y, lab, num_classes=num_classes, batch_size=PAPER_BATCH))
    KF.check_paired_samples(x_feat, y_feat)
    cache = cache or DistanceCache()
    return float(KF.relevance_score_from_distances(cache.features(x_feat), cache.features(y_feat),
                                                   cache.labels(labels, x_feat, num_classes)))


def rs_stages(student_stages: Sequence[Tensor], base_stages: Sequence[Tensor], labels: Tensor,
              num_classes: Optional[int] = None, estimator: str = DEFAULT_FSS_ESTIMATOR,
              cache: Optional[DistanceCache] = None):
    """Per stage k (the student and its base share the architecture): (rs_k, rs_residual_k)
    = (relevance(student_k, base_k), relevance(base_k, student_k))."""
    if len(student_stages) != len(base_stages):
        raise ValueError(f"student and base have {len(student_stages)} and {len(base_stages)} stages")
    cache = cache or DistanceCache()
    rs = [relevance(s, b, labels, num_classes, estimator, cache) for s, b in zip(student_stages, base_stages)]
    res = [relevance(b, s, labels, num_classes, estimator, cache) for s, b in zip(student_stages, base_stages)]
    return rs, res
