"""A profile checked against everything it names, before any job starts.

:func:`validate_profile` runs the structure check (the JSON schema), then the names
(datasets and their options, archs, methods, excluded methods), then every method's
hyperparameters and its ``check_pair`` on meta-device models of each pair, then
``student_shots`` against the datasets' class sizes, the teachers' specs and the tuning
keys; it returns the profile with its defaults filled in. Every problem is one
KDBenchError naming the key, the bad value and the valid choices.

Layer: the top of the library (above methods, models, data, hparams, tuning and
teachers); the CLI and the Snakefile call it.
"""
from __future__ import annotations

import copy
import inspect
import os
from typing import Any, Dict, List, Optional, Sequence

import jsonschema
import torch

from kdbench.config.loading import (PROFILE_DEFAULTS, REFERENCE_METHODS, ParamsError, apply_overrides,
                                    check_finite, check_results_dir, load_yaml, pair_methods, recipe_for,
                                    validate_structure, with_defaults)
from kdbench.data import DATASETS
from kdbench.data.base import OPTION_TYPES, min_train_class_count
from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.hparams import method_hparams
from kdbench.methods import get_method, iter_method_names
from kdbench.methods.base import Distiller
from kdbench.models import check_model_name, create_model
from kdbench.models.staged import skip_init
from kdbench.teachers import check_teacher_specs, inline_teachers_file
from kdbench.tuning import validate_tuning


def validate_names(profile: dict, source: str = "params") -> None:
    """Every dataset, arch and method name must exist (checked without building them)."""
    for name, options in profile["datasets"].items():
        DATASETS.get(name)
        _check_dataset_options(name, options or {})
    for pair in profile["pairs"]:
        check_model_name(pair["teacher"])
        check_model_name(pair["student"])
    for name in profile["methods"]:
        get_method(name)
    _check_excluded_methods(profile, source)
    for name in profile.get("method_params", {}):
        get_method(name)
    for recipe in ("teacher_train", "student_train"):
        for arch in profile.get(recipe, {}).get("arch_lr", {}) or {}:
            check_model_name(arch)


def _check_excluded_methods(profile: dict, source: str) -> None:
    """Every name in a pair's ``exclude_methods`` is a registered method (a profile that
    lists fewer methods may keep the exclusions), and not one of the board's references."""
    known = list(iter_method_names())
    for pair in profile["pairs"]:
        for name in pair.get("exclude_methods") or ():
            where = f"exclude_methods of pair {pair['teacher']}->{pair['student']}"
            if name not in known:
                raise UnknownChoiceError(f"method in {where}", name, known)
            if name in REFERENCE_METHODS:
                raise ParamsError(f"{source}: {where}: {name!r} cannot be excluded: every cell of the board is "
                                  f"compared against {' and '.join(REFERENCE_METHODS)}")


def _check_dataset_options(name: str, options: dict) -> None:
    """Every option is one the dataset takes, of its declared type and range
    (kdbench.data.base.OPTION_TYPES, declared beside each dataset's registration)."""
    sig = inspect.signature(DATASETS.get(name))
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        for key in options:
            if key not in sig.parameters:
                raise UnknownChoiceError(f"option of dataset {name!r}", key, sig.parameters)
    types = OPTION_TYPES.get(name)
    if types is None:
        raise ParamsError(f"dataset {name!r} declares no option types (OPTION_TYPES[{name!r}] beside its "
                          f"registration): its options cannot be checked")
    for key, value in options.items():
        schema = types.get(key)
        if schema is None:
            raise ParamsError(f"dataset {name!r}: option {key!r} has no declared type (OPTION_TYPES[{name!r}])")
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if err is not None:
            expected = ", ".join(f"{k} {v}" for k, v in schema.items())
            raise ParamsError(f"dataset {name!r}: option {key} = {value!r} is invalid ({err.message}); "
                              f"expected {expected}")


def validate_profile(profile: dict, source: str = "params", methods: Optional[Sequence[str]] = None) -> dict:
    """Validate a profile (structure, then names, then method hyperparameters, then every
    pair x method with the method's ``check_pair``, then ``student_shots`` against the
    datasets' class sizes); returns it with defaults filled in. Raises a KDBenchError
    naming the problem. ``methods``: check only these methods' hyperparameters and pairs
    (a job checks its own: the workflow validated the whole profile before any job ran);
    every name is still checked."""
    profile = inline_teachers_file(profile, source)  # `teachers: file.yaml` -> its mapping
    check_finite(profile, source)
    validate_structure(profile, source)
    check_results_dir(profile.get("results_dir", PROFILE_DEFAULTS["results_dir"]), source)
    validate_names(profile, source)
    full = with_defaults(profile)
    check_teacher_specs(full, source)
    nproc = int(full["nproc_per_node"])
    for recipe in ("teacher_train", "student_train"):
        for dataset in (full[recipe].get("per_dataset") or {}):
            if dataset not in full["datasets"]:
                raise UnknownChoiceError(f"dataset of {recipe}.per_dataset (the profile's datasets)", dataset,
                                         full["datasets"])
        for dataset in full["datasets"]:
            batch_size = recipe_for(full, recipe, dataset)["batch_size"]
            if batch_size % nproc:
                raise ParamsError(f"{source}: {recipe}.batch_size {batch_size} is not divisible by nproc_per_node "
                                  f"{nproc} (dataset {dataset}; the global batch is split evenly over the processes)")
    for pair in full["pairs"]:
        for method in pair_methods(full, pair["teacher"], pair["student"]):
            if methods is not None and method not in methods:
                continue
            hp = method_hparams(method, pair["teacher"], pair["student"], full.get("method_params"))
            check_method_pair(method, pair["teacher"], pair["student"], hp)
    _check_student_shots(full, source)
    validate_tuning(full, source, methods)
    return full


def load_profile(path: os.PathLike) -> dict:
    return validate_profile(load_yaml(path), source=str(path))


def load_profile_with_overrides(path: os.PathLike, overrides: Optional[List[str]] = None,
                                methods: Optional[Sequence[str]] = None) -> dict:
    """``path`` with ``--set KEY=VALUE`` overrides applied, validated (``methods``: as
    :func:`validate_profile`). An error that the file alone does not have is blamed on the
    command line's ``--set``, not on the file."""
    raw_file = load_yaml(path)
    raw = apply_overrides(raw_file, overrides or [])
    try:
        return validate_profile(raw, source=str(path), methods=methods)
    except KDBenchError:
        if not overrides:
            raise
        try:
            validate_profile(copy.deepcopy(raw_file), source=str(path), methods=methods)
        except KDBenchError:
            pass
        else:  # the file alone is valid: the overrides broke it
            sets = " ".join(f"--set {o}" for o in overrides)
            validate_profile(raw, source=f"the command line ({sets})", methods=methods)
        raise


_META_MODELS: Dict[str, Any] = {}


def meta_model(arch: str):
    """``arch`` built on the ``meta`` device (real shapes, no memory, no values), cached
    per arch: what ``Distiller.check_pair`` gets at validation."""
    if arch not in _META_MODELS:
        with torch.device("meta"), skip_init():
            _META_MODELS[arch] = create_model(arch, 10)
    return _META_MODELS[arch]


def check_method_pair(method: str, teacher: str, student: str, hparams: dict) -> None:
    """``get_method(method).check_pair`` on meta-device models of the pair (a
    ``PairError`` naming method, pair and reason when the method cannot run it)."""
    cls = get_method(method)
    if _inherits_default_check(cls):
        return  # the default accepts every pair: build nothing
    t = meta_model(teacher) if cls.needs_teacher else None
    cls.check_pair(t, meta_model(student), hparams)


def _inherits_default_check(cls) -> bool:
    return getattr(cls.check_pair, "__func__", None) is Distiller.check_pair.__func__


def _check_student_shots(full: dict, source: str) -> None:
    for name, options in full["datasets"].items():
        shots = recipe_for(full, "student_train", name).get("student_shots")
        if not shots:
            continue
        smallest = min_train_class_count(name, options)
        if smallest is not None and shots > smallest:
            raise ParamsError(
                f"{source}: student_train.student_shots = {shots} images per class, but the smallest class of "
                f"dataset {name!r} has {smallest} training images with these options; use at most {smallest}")


def check_in_profile(profile: dict, dataset: str, teacher: Optional[str], student: Optional[str], method: Optional[str]) -> None:
    if dataset not in profile["datasets"]:
        raise UnknownChoiceError("dataset of this profile", dataset, profile["datasets"])
    if method is not None and method not in profile["methods"]:
        get_method(method)  # a real method that the profile does not list is allowed
