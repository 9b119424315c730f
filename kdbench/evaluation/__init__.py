"""Evaluation metrics of kdbench: accuracy and agreement,
explanation similarity and EPG, FSS/RS and UniCAM, decision consistency and the
hierarchy ARI, efficiency; ``evaluate_run`` puts them in one record per run.

``kdbench evaluate`` runs once per student, so its fixed cost matters: the metrics need
torch and numpy only (the probes and the ARI are torch/numpy, not sklearn), and nothing on
the path imports scipy, sklearn or ``torch._dynamo`` (see ``engine.runtime.set_deterministic``,
``efficiency.flops_per_image``, ``hierarchy.lbfgs_minimize``); PIL is imported only to
write a figure.

Modules: ``predict`` (a model's logits / classes over a split), ``accuracy`` (accuracy,
OOD score, calibration, agreement), ``explanations``, ``similarity``, ``hierarchy``,
``efficiency``, ``figures``; ``run`` (``evaluate_run``: one step per metric group)."""
from __future__ import annotations

from kdbench.evaluation.run import evaluate_run

__all__ = ["evaluate_run"]
