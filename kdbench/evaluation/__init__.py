"""Evaluation metrics of kdbench (``specs/evaluation.md``): accuracy and agreement,
explanation similarity and EPG, FSS/RS and UniCAM, decision consistency and the
hierarchy ARI, efficiency; ``evaluate_run`` puts them in one record per run.

Submodules import their heavy dependencies (sklearn, matplotlib) lazily."""
from __future__ import annotations


def evaluate_run(*args, **kwargs):
    """See :func:`kdbench.evaluation.run.evaluate_run`."""
    from kdbench.evaluation.run import evaluate_run as _run

    return _run(*args, **kwargs)


__all__ = ["evaluate_run"]
