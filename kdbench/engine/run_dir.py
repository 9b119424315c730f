"""The state of a run folder (a teacher's, a student's or a tuning trial's): finished for
a config, or holding another config's finished run. ``metrics.json`` is written last, so
it marks a finished run; both it and ``model.pt`` carry the config hash.
"""
from __future__ import annotations

import json
from pathlib import Path

from kdbench.config import layout
from kdbench.engine.model_io import model_config_hash
from kdbench.errors import KDBenchError


def is_finished(out: Path, cfg) -> bool:
    """Both final outputs exist, and both say they belong to this config (the same test
    a student applies to its teacher's model.pt)."""
    metrics, model = out / layout.METRICS, out / layout.MODEL
    if not metrics.is_file() or not model.is_file():
        return False
    try:
        if json.loads(metrics.read_text()).get("config_hash") != cfg.config_hash:
            return False
    except ValueError:
        return False
    return model_config_hash(model) == cfg.config_hash


def check_not_foreign(out: Path, cfg) -> None:
    """A run directory never gets a run of another config unless asked: a finished run
    there (its metrics.json) of another config hash is refused, naming --force and --out."""
    try:
        found = json.loads((out / layout.METRICS).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return  # nothing finished there (or a damaged file, which the run replaces)
    if found is not None and found != cfg.config_hash:
        raise KDBenchError(f"{out} holds a finished run of another config (config_hash {found}; this command's is "
                           f"{cfg.config_hash}): give --out DIR (or a profile with another results_dir) to train "
                           f"this one elsewhere, or --force to replace that run")
