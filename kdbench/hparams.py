"""What one run trains with: a method's hyperparameters and a student's run config.

A method's values come, in this order, from its params file (params/methods/<m>.yaml
``defaults``, then the ``pairs["teacher->student"]`` entry), the tuning selection that
applies to the run (a ``tuned:`` selection file, or the profile's own ``tuning:`` trials'
selection.json), and the profile's ``method_params`` (a value the profile fixes is never
tuned). The tuning protocol itself (candidates, trials, selection) is :mod:`kdbench.tuning`;
this module only reads its results. Layer: above the methods and models (it asks them
to check the values), below tuning, teachers and the profile checks.
"""
from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

from kdbench.config import layout
from kdbench.config.loading import (ParamsError, check_finite, load_yaml, project_root, recipe_for,
                                    teacher_seed_of)
from kdbench.config.method_files import check_hparam_types, load_method_spec, method_file
from kdbench.config.run import RunConfig, hashed_recipe
from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.methods import get_method
from kdbench.models import check_model_name


def check_pair_archs(spec: dict, path) -> None:
    """Every ``pairs:`` key of a method's params file names two known archs (a one-line
    error with a did-you-mean otherwise; a pair the profile does not use is fine)."""
    for pair in spec.get("pairs") or {}:
        for arch in str(pair).split("->"):
            try:
                check_model_name(arch.strip())
            except UnknownChoiceError as err:
                hint = f" (did you mean {pair.replace(arch, err.suggestion)!r}?)" if err.suggestion else ""
                raise ParamsError(f"pair override in {path}: {pair!r} names an unknown arch {arch.strip()!r}{hint}; "
                                  f"`kdbench list archs` lists the valid ones") from None


def method_spec(path: Path) -> dict:
    """A method's params file, its keys and its pairs' arch names checked."""
    spec = load_method_spec(path)
    check_pair_archs(spec, path)
    return spec


# --------------------------------------------------------------------------- tuning selections
class TuningError(KDBenchError, ValueError):
    """A search space, a tuning block or a selection file is invalid."""


def hparams_source(n_trials: int) -> str:
    return f"tuned ({int(n_trials)} trials, val)"


#: the source of an untuned method's values: its params file's (a paper's values), or the
#: class's ``default_hparams`` where it has no params file (a plugin: no paper behind them)
PAPER, DEFAULTS = "paper", "defaults"


def untuned_source(method: str, params_dir: Optional[Path] = None) -> str:
    """``paper`` where ``params/methods/<method>.yaml`` exists, else ``defaults``."""
    return PAPER if method_file(method, params_dir).is_file() else DEFAULTS


def check_axis(method: str, name: str, axis, default, where: str) -> None:
    if not isinstance(axis, dict):
        raise TuningError(f"{where}: search axis {name!r} must be a mapping ({{low, high[, log]}} or {{choices}})")
    if "choices" in axis:
        extra = set(axis) - {"choices"}
        choices = axis["choices"]
        if extra or not isinstance(choices, list) or not choices or len(set(map(repr, choices))) != len(choices):
            raise TuningError(f"{where}: search axis {name!r}: choices must be a non-empty list of distinct "
                              f"values and nothing else, got {axis!r}")
        return
    extra = set(axis) - {"low", "high", "log"}
    if extra or not {"low", "high"} <= set(axis):
        raise TuningError(f"{where}: search axis {name!r} needs low and high (and optionally log), got {axis!r}")
    low, high = axis["low"], axis["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise TuningError(f"{where}: search axis {name!r}: low < high numbers, got low={low!r} high={high!r}")
    if axis.get("log", False) and low <= 0:
        raise TuningError(f"{where}: search axis {name!r} is on a log scale: low must be > 0, got {low!r}")
    if not isinstance(default, (int, float)) or not low <= default <= high:
        raise TuningError(f"{where}: search axis {name!r} = [{low}, {high}] must contain the paper value "
                          f"{default!r}")


def search_space(method: str, params_dir: Optional[Path] = None, fixed=()) -> Dict[str, dict]:
    """The method's ``search`` axes (in file order), checked; ``fixed`` names are left out
    (a profile's ``method_params`` fix them)."""
    path = method_file(method, params_dir)
    if not path.is_file():
        return {}
    spec = method_spec(path)
    space = spec.get("search") or {}
    defaults = spec.get("defaults") or {}
    if not isinstance(space, dict):
        raise TuningError(f"{path}: search must be a mapping of axis name -> range")
    for name, axis in space.items():
        if name not in defaults:
            raise UnknownChoiceError(f"search axis in {path}", name, list(defaults))
        check_axis(method, name, axis, defaults[name], str(path))
    return {k: v for k, v in space.items() if k not in set(fixed)}


def tuning_of(profile: dict) -> Optional[dict]:
    return profile.get("tuning") or None


def fixed_axes(profile: dict, method: str) -> Tuple[str, ...]:
    return tuple(((profile.get("method_params") or {}).get(method) or {}).keys())


def profile_space(profile: dict, method: str) -> Dict[str, dict]:
    return search_space(method, fixed=fixed_axes(profile, method))


def is_tuned(profile: dict, method: str) -> bool:
    """Whether tuning applies to ``method``: it has hyperparameters (vanilla has none)."""
    return bool(method_hparams(method, None, "-")) and bool(profile_space(profile, method))


def resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project_root() / p


@lru_cache(maxsize=8)
def _load_selection_file(path: str, mtime: float) -> dict:
    doc = load_yaml(path)
    proto = doc.get("protocol")
    if not isinstance(proto, dict) or not isinstance(proto.get("trials"), int) or \
            not isinstance(doc.get("entries"), list):
        raise TuningError(f"selection file {path} needs protocol.trials (an integer) and an entries list")
    table = {}
    for e in doc["entries"]:
        if not isinstance(e, dict) or not {"dataset", "teacher", "student", "method", "values"} <= set(e):
            raise TuningError(f"selection file {path}: every entry needs dataset, teacher, student, method, values")
        table[(e["dataset"], e["teacher"], e["student"], e["method"])] = e
    return {"trials": proto["trials"], "entries": table, "recipe": proto.get("recipe") or {},
            "datasets": proto.get("datasets") or {}}


def protocol_mismatch(table: dict, profile: dict, dataset: str) -> list:
    """What differs between the recipe and dataset options a selection file was tuned on
    (its ``protocol``) and the ones ``profile`` trains ``dataset`` with: the names of the
    differing keys (``student_train.<key>``, ``datasets.<key>``); empty when they match or
    when the file does not record them."""
    tuned_recipe = table["recipe"].get(dataset)
    tuned_options = table["datasets"].get(dataset)
    out = []
    if tuned_recipe is not None:
        ours = hashed_recipe(recipe_for(profile, "student_train", dataset))
        theirs = hashed_recipe(tuned_recipe)
        out += [f"student_train.{k}" for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if tuned_options is not None:
        ours = profile["datasets"].get(dataset) or {}
        out += [f"datasets.{k}" for k in sorted(set(ours) | set(tuned_options)) if ours.get(k) != tuned_options.get(k)]
    return out


def load_selection_file(path: Path) -> dict:
    if not Path(path).is_file():
        raise TuningError(f"selection file {path} (tuned:) does not exist: regenerate it with the tuning profile "
                          f"(see docs/hyperparameters.md)")
    return _load_selection_file(str(path), os.path.getmtime(path))


def selected_values(profile: dict, dataset: str, teacher: str, student: str, method: str):
    """(values, hparams_source) of a benchmark run: the selection of the profile's
    ``tuning:`` trials (results/tuning/.../selection.json, read when the job runs), or of
    its ``tuned:`` file; (None, :func:`untuned_source`) when neither applies (vanilla, an
    untuned profile, a plugin, or a cell the selection file does not list)."""
    tuning, tuned = tuning_of(profile), profile.get("tuned")
    if not (tuning or tuned) or not is_tuned(profile, method):
        return None, untuned_source(method)
    if tuning:
        path = layout.selection(profile["results_dir"], dataset, teacher, student, method)
        if not path.is_file():
            raise TuningError(f"{path} not found: run the tuning trials and their selection first (kdbench "
                              f"tune-select --dataset {dataset} --teacher {teacher} --student {student} "
                              f"--method {method}, or the pipeline)")
        rec = json.loads(path.read_text())
        return dict(rec["values"]), rec["hparams_source"]
    table = load_selection_file(resolve(tuned))
    entry = table["entries"].get((dataset, teacher, student, method))
    if entry is None:
        return None, untuned_source(method)
    differs = protocol_mismatch(table, profile, dataset)
    source = hparams_source(table["trials"])
    if differs:  # the values were selected for another recipe: the row says so, never silently
        source = f"{source[:-1]}; selected for another recipe: {', '.join(differs)})"
    return dict(entry["values"]), source


# --------------------------------------------------------------------------- a method's values, a student's config
def method_hparams(method: str, teacher: Optional[str], student: str,
                   overrides: Optional[dict] = None, params_dir: Optional[Path] = None,
                   tuned: Optional[dict] = None) -> dict:
    """A method's hyperparameters: params/methods/<method>.yaml ``defaults``, then its
    ``pairs["teacher->student"]`` entry, then ``tuned`` (the values a tuning selection
    chose, kdbench.tuning), then the profile's ``method_params[method]`` (a value the
    profile sets explicitly is fixed, never tuned). Validated against the method's
    declared names and the file's ``types:``."""
    cls = get_method(method)
    path = method_file(method, params_dir)
    types = None
    if path.is_file():
        spec = method_spec(path)
        hp = dict(spec.get("defaults") or {})
        hp.update((spec.get("pairs") or {}).get(f"{teacher}->{student}", {}) or {})
        types = spec.get("types")
    elif cls.default_hparams is not None:
        hp = dict(cls.default_hparams)
    elif not cls.hparam_names:
        hp = {}
    else:
        raise ParamsError(f"method {method!r} has no hyperparameter file {path}")
    hp.update(copy.deepcopy(tuned or {}))
    hp.update(copy.deepcopy((overrides or {}).get(method, {}) or {}))
    cls.check_hparams(hp)
    check_finite(hp, str(path), f"hyperparameters of {method}")
    check_hparam_types(method, hp, types, str(path))
    return hp


def student_config(profile: dict, dataset: str, teacher: str, student: str, method: str, seed: int,
                   *, tuned: Optional[dict] = None, hparams_source: Optional[str] = None,
                   trial: Optional[int] = None) -> RunConfig:
    """The run config of one student. Its hyperparameters: the method's paper values, or
    the values the profile's tuning selected for (dataset, pair, method) (kdbench.tuning:
    a ``tuned:`` selection file, or the ``tuning:`` trials' selection under results/).
    ``tuned``/``hparams_source`` given explicitly (tuning trials) skip that look-up."""
    if tuned is None and hparams_source is None:
        tuned, hparams_source = selected_values(profile, dataset, teacher, student, method)
    needs_teacher = get_method(method).needs_teacher
    return RunConfig(
        kind="student", dataset=dataset, dataset_options=profile["datasets"][dataset], arch=student,
        method=method, seed=seed, recipe=recipe_for(profile, "student_train", dataset),
        hparams=method_hparams(method, teacher, student, profile.get("method_params"), tuned=tuned),
        teacher=teacher if needs_teacher else None,
        teacher_seed=teacher_seed_of(profile, seed) if needs_teacher else None,
        device=profile["device"], threads=profile["threads"],
        precision=profile["precision"], channels_last=profile["channels_last"], compile=profile["compile"],
        hparams_source=hparams_source or untuned_source(method), trial=trial)
