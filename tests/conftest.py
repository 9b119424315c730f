"""Fixtures shared by the test modules (pytest finds them here by name)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fixed numpy generator: the independent reference computations draw from it."""
    return np.random.default_rng(0)
