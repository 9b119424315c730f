"""Evaluation metrics of kdbench (``specs/evaluation.md``): accuracy and agreement,
explanation similarity and EPG, FSS/RS and UniCAM, decision consistency and the
hierarchy ARI, efficiency; ``evaluate_run`` puts them in one record per run.

``kdbench evaluate`` runs once per student, so its fixed cost matters: the metrics need
torch and numpy only (the probes and the ARI are torch/numpy, not sklearn), and nothing on
the path imports scipy, sklearn or ``torch._dynamo`` (see ``engine.runtime.set_deterministic``,
``efficiency.flops_per_image``, ``hierarchy.lbfgs_minimize``); PIL is imported only to
write a figure."""
from __future__ import annotations


def evaluate_run(*args, **kwargs):
    """See :func:`kdbench.evaluation.run.evaluate_run`."""
    from kdbench.evaluation.run import evaluate_run as _run

    return _run(*args, **kwargs)


__all__ = ["evaluate_run"]
