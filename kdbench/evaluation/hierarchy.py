"""TDD's claim as numbers: does the student's decision process follow the teacher's
coarse-to-fine tree? (``decision_consistency``), and does the teacher's tree match the
true hierarchy? (``hierarchy_ari``).

The teacher's per-stage partitions come from :mod:`kdbench.methods.tdd` (the same
derivation TDD trains with) and are cached per teacher run in ``partitions.json``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

Partition = List[List[int]]


def class_to_group(partition: Partition, num_classes: int) -> np.ndarray:
    """Array mapping each class to the index of its group in ``partition``."""
    out = np.full(num_classes, -1, dtype=np.int64)
    for g, members in enumerate(partition):
        for c in members:
            out[int(c)] = g
    if (out < 0).any():
        missing = np.flatnonzero(out < 0).tolist()
        raise ValueError(f"partition does not cover classes {missing[:10]}")
    return out


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy on (test_x, test_y) of a linear probe (standardised features, sklearn
    LogisticRegression, lbfgs, deterministic) fit on (train_x, train_y)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    classes = np.unique(train_y)
    if len(classes) < 2:  # nothing to learn: predict the one class seen
        return float(np.mean(np.asarray(test_y) == classes[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def stage_for_partitions(n_student: int, n_teacher: int) -> List[Tuple[int, int]]:
    """(student stage, teacher stage) pairs for every student stage except the last, at
    the same relative depth (``stage_pairs``); the teacher stage is clamped below the
    teacher's last stage (partitions exist for stages 0..n_t-2 only)."""
    from kdbench.methods.adapters import stage_pairs

    return [(i, min(j, n_teacher - 2)) for i, j in stage_pairs(n_student, n_teacher)[: n_student - 1]]


def decision_consistency(train_feats: Sequence[np.ndarray], train_labels: np.ndarray,
                         test_feats: Sequence[np.ndarray], test_labels: np.ndarray,
                         partitions: Sequence[Partition], num_classes: int,
                         n_teacher_stages: Optional[int] = None) -> Tuple[Optional[float], List[Optional[float]]]:
    """Mean probe accuracy over student stages (all but the last) predicting the teacher's
    super-class π_l(y) of each image's true class from the pooled stage features.

    ``train_feats[i]`` / ``test_feats[i]``: pooled features (n × C_i) of student stage i
    (the last stage may be included; it is ignored). ``partitions[l]``: the teacher's
    partition at teacher stage l (l = 0..n_t-2). Stages whose partition has a single
    super-class carry no decision (the probe would be trivially right) and are skipped
    (None in the per-stage list); if every stage is skipped the mean is None.
    """
    n_s = len(train_feats)
    n_t = (len(partitions) + 1) if n_teacher_stages is None else n_teacher_stages
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    per_stage: List[Optional[float]] = []
    for i, j in stage_for_partitions(n_s, n_t):
        part = partitions[j]
        if len(part) < 2:
            per_stage.append(None)
            continue
        lookup = class_to_group(part, num_classes)
        per_stage.append(probe_accuracy(train_feats[i], lookup[train_labels], test_feats[i], lookup[test_labels]))
    valid = [v for v in per_stage if v is not None]
    return (float(np.mean(valid)) if valid else None), per_stage


def coarsest_partition(partitions: Sequence[Partition]) -> Optional[Partition]:
    """The teacher's coarsest non-trivial partition: the fewest super-classes but at least
    two (earliest stage on ties); if every stage is a single group, that group."""
    if not partitions:
        return None
    nontrivial = [p for p in partitions if len(p) >= 2]
    pool = nontrivial or list(partitions)
    return min(pool, key=len)  # min keeps the first (earliest) on ties


def hierarchy_ari(partitions: Sequence[Partition], hierarchy: Optional[Sequence[Partition]],
                  num_classes: int) -> Optional[float]:
    """Adjusted Rand index (over classes) between the teacher's coarsest partition and
    the dataset's true coarse groups ``hierarchy[0]``; None without a hierarchy."""
    if not hierarchy:
        return None
    part = coarsest_partition(partitions)
    if part is None:
        return None
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(class_to_group(hierarchy[0], num_classes), class_to_group(part, num_classes)))
