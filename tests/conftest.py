"""Fixtures shared by the test modules (pytest finds them here by name)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fixed numpy generator: the independent reference computations draw from it."""
    return np.random.default_rng(0)


#: the longest test files, started first (`make test` runs `pytest -n 2 --dist loadfile
#: --no-loadscope-reorder`: a worker takes whole files in this order). The smoke pipeline
#: (tests/test_pipeline.py) is the suite's critical path: started last, as xdist's default
#: order (most tests first) did, the suite waited for it alone at the end.
FIRST = ("test_pipeline.py", "test_faults_pipeline.py", "test_workflow_dry_runs.py", "test_pipeline_tuning.py",
         "test_tracking.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
