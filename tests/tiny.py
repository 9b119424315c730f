"""Tiny profiles, datasets and helpers shared by the tests (a test module uses a fixture
from here by importing it: ``from tests.tiny import ds16, one_thread``)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

TINY_PROFILE = {
    "results_dir": "results",
    "datasets": {"shapes": {"image_size": 16, "n_train": 256, "n_val": 64, "n_test": 64, "n_test_ood": 64, "seed": 0}},
    "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0],
    "teacher_seed": 0,
    "teacher_train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
    "student_train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "schedule": "step", "milestones": [2]},
    "threads": 1,
    "tracking": {"enabled": False},
}


def tiny_profile(tmp: Path, **changes) -> dict:
    prof = copy.deepcopy(TINY_PROFILE)
    prof["results_dir"] = str(tmp / "results")
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(prof.get(key), dict):
            prof[key].update(value)
        else:
            prof[key] = value
    return prof


def write_profile(tmp: Path, prof: dict, name: str = "tiny.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(prof))
    return path


# ----------------------------------------------------------------------------- method tests
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster on a busy machine
    (autouse: a test module that imports it runs all its tests on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ds16():
    from kdbench.data import build_dataset

    return build_dataset("shapes", image_size=16, n_train=48, n_val=8, n_test=8, n_test_ood=8, seed=0)


@pytest.fixture(scope="module")
def ds32():
    from kdbench.data import build_dataset

    return build_dataset("shapes", image_size=32, n_train=32, n_val=8, n_test=8, n_test_ood=8, seed=0)


def t64(a) -> torch.Tensor:
    """``a`` (array-like) as a float64 tensor."""
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)
