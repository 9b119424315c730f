"""Pure loss and metric math of kdbench, in two modules for two audiences:

- :mod:`kdbench.functional.losses`: the distillation losses (used by ``kdbench/methods``);
- :mod:`kdbench.functional.metrics`: the evaluation metrics (used by ``kdbench/evaluation``
  and ``kdbench/explain``).

Every function is stateless, batched (first dimension = samples) and keeps the input
dtype: float64 inputs give float64 results, nothing is cast down. ``kdbench.functional``
re-exports both modules, so ``from kdbench import functional as KF; KF.kd_loss(...)``
keeps working. This package imports nothing else of kdbench (a leaf: docs/architecture.md).
"""
from kdbench.functional.losses import *  # noqa: F401,F403
from kdbench.functional.metrics import *  # noqa: F401,F403
from kdbench.functional.losses import __all__ as _losses_all
from kdbench.functional.metrics import __all__ as _metrics_all

__all__ = list(_losses_all) + list(_metrics_all)
