"""The methods' hyperparameter files, params/methods/<method>.yaml: their location, their
keys (``defaults``, ``types``, ``search``, ``pairs``) and the type check of values against
``types:``. Which values one run uses (the file, a tuning selection, the profile's
``method_params``) is :mod:`kdbench.hparams`'s job. Leaf layer: imports nothing above
:mod:`kdbench.config`.
"""
from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from kdbench.config.loading import ParamsError, load_yaml, project_root
from kdbench.errors import UnknownChoiceError

#: top-level keys of params/methods/<m>.yaml (``types`` and ``search``: contract 1)
METHOD_FILE_KEYS = ("defaults", "types", "search", "pairs")


@lru_cache(maxsize=None)
def _method_file(path: str, mtime_ns: int) -> dict:
    """A method's params file, read once (per mtime): its keys and pair names checked."""
    spec = load_yaml(path)
    for key in spec:
        if key not in METHOD_FILE_KEYS:
            raise UnknownChoiceError(f"key in {path}", key, METHOD_FILE_KEYS)
    for pair in spec.get("pairs") or {}:
        _check_pair_key(pair, f"pair override in {path}")
    return spec


def _check_pair_key(pair: str, where: str) -> None:
    """``"teacher->student"``: two non-empty names (whether they are archs is checked by
    :func:`kdbench.hparams.check_pair_archs`; a pair the profile does not use is fine)."""
    parts = str(pair).split("->")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ParamsError(f"{where}: {pair!r} must look like 'teacher->student', e.g. 'resnet56->resnet20'")


def check_hparam_types(method: str, hparams: dict, types: Optional[dict], where: str) -> None:
    """JSON-schema check of every hyperparameter against the method's ``types:`` block;
    a one-line error naming method, key, value and the expected type/range."""
    if not types:
        return
    import jsonschema

    for key, value in hparams.items():
        schema = types.get(key)
        if schema is None:
            continue
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if err is not None:
            expected = ", ".join(f"{k} {v}" for k, v in schema.items() if k != "description")
            raise ParamsError(f"method {method!r}: hyperparameter {key} = {value!r} is invalid ({err.message}); "
                              f"expected {expected} (types: in {where})")


def method_file(method: str, params_dir: Optional[Path] = None) -> Path:
    return (params_dir or project_root() / "params" / "methods") / f"{method}.yaml"


def load_method_spec(path: Path) -> dict:
    """A params/methods file, read once per version of it (the DAG asks for it per job),
    its keys and pair names checked."""
    return copy.deepcopy(_method_file(str(path), os.stat(path).st_mtime_ns))
