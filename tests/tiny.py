"""Tiny profiles and helpers shared by the engine/CLI tests."""
from __future__ import annotations

import copy
from pathlib import Path

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
