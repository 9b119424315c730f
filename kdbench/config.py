"""Params profiles, typed run configs, merging, hashing and validation errors.

A *profile* (params/*.yaml) describes a whole benchmark: datasets, teacher/student pairs,
methods, seeds and the training recipes. A *run config* is what one job needs: it is
resolved from a profile for one (dataset, arch(s), method, seed) and hashed; the hash is
recorded with the run so that a changed recipe is visible on the board.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from kdbench.errors import KDBenchError, UnknownChoiceError

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR / "params.schema.yaml"

RECIPE_DEFAULTS: Dict[str, Any] = {
    "epochs": 240,
    "batch_size": 64,
    "eval_batch_size": 512,
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "step",
    "milestones": [150, 180, 210],
    "gamma": 0.1,
    "student_shots": None,
    "arch_lr": {},
}

PROFILE_DEFAULTS: Dict[str, Any] = {
    "results_dir": "results",
    "teacher_seed": 0,
    "method_params": {},
    "evaluation": {"n_samples": 256, "probe_train_samples": 1024, "figures": True, "figure_images": 8},
    "device": "auto",
    "threads": 1,
    "teacher_threads": None,
    "precision": "fp32",
    "channels_last": False,
    "compile": False,
    "nproc_per_node": 1,
    "tracking": {"enabled": True, "experiment": "kdbench"},
}


class ParamsError(KDBenchError, ValueError):
    """A params profile or run option is invalid (names the key and the problem)."""


# --------------------------------------------------------------------------- profiles
def project_root() -> Path:
    """The repository root: where params/ lives (KDBENCH_ROOT overrides)."""
    env = os.environ.get("KDBENCH_ROOT")
    if env:
        return Path(env).resolve()
    for cand in (Path.cwd(), *Path.cwd().parents, PACKAGE_DIR.parent):
        if (cand / "params" / "methods").is_dir():
            return cand
    return Path.cwd()


class YamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads the scientific notation people write (``1e-3``,
    ``5E4``, ``-2e+3``) as floats: YAML 1.1 (PyYAML) needs a dot (``1.0e-3``) and reads
    ``1e-3`` as the string '1e-3'."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))

#: the reader's bounds: a profile is a few hundred values; these stop a hostile or broken
#: file (a billion-laughs alias bomb, 100k nested brackets, a 5000-digit number) in
#: milliseconds with one error instead of a hang, a RecursionError or a traceback
MAX_DEPTH = 64
MAX_NODES = 100_000          # values after alias expansion
MAX_SCALAR_CHARS = 10_000
MAX_INT_DIGITS = 30


class YamlLimitError(yaml.YAMLError):
    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _bounded_compose_node(self, parent, index):
    depth = getattr(self, "_kdb_depth", 0)
    if depth >= MAX_DEPTH:
        raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
    self._kdb_depth = depth + 1
    try:
        event = self.peek_event()
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise YamlLimitError(f"a value of {len(event.value)} characters (at most {MAX_SCALAR_CHARS})",
                                 event.start_mark)
        node = yaml.composer.Composer.compose_node(self, parent, index)
    finally:
        self._kdb_depth = depth
    sizes = self.__dict__.setdefault("_kdb_sizes", {})
    if id(node) not in sizes:  # an alias returns its anchor's node, already counted
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = (node, 1 + sum(sizes[id(c)][1] for c in children))
    if sizes[id(node)][1] > MAX_NODES:
        raise YamlLimitError(f"more than {MAX_NODES} values once its aliases (*name) are expanded "
                             f"(an alias bomb?)", node.start_mark)
    return node


def _bounded_int(self, node):
    digits = len(str(node.value).lstrip("+-").replace("_", ""))
    if digits > MAX_INT_DIGITS:
        raise YamlLimitError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})", node.start_mark)
    return yaml.constructor.SafeConstructor.construct_yaml_int(self, node)


def _unique_mapping(self, node, deep=False):
    """A mapping whose keys are unique: a second ``seeds:`` is an error naming both lines
    (YAML's merge key ``<<`` may repeat keys: the explicit one wins, as YAML says)."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise YamlLimitError(f"the key {key!r} appears twice (lines {seen[key] + 1} and "
                                     f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
    return yaml.constructor.SafeConstructor.construct_mapping(self, node, deep=deep)


YamlLoader.compose_node = _bounded_compose_node
YamlLoader.construct_mapping = _unique_mapping
YamlLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def _check_bracket_depth(text: str) -> None:
    """Flow brackets nested deeper than MAX_DEPTH, found before PyYAML's scanner (which
    looks ahead over every open bracket) spends seconds on them."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for line_no, line in enumerate(text.splitlines()):
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep", yaml.Mark("", 0, line_no, 0, None, None))
            elif ch in "]}" and depth:
                depth -= 1


def yaml_load(text, source: str = "YAML") -> Any:
    """Parse YAML text or a stream with :class:`YamlLoader` (safe: plain values only).
    Errors are one-line ``ParamsError`` naming ``source``, the line and the problem."""
    if not isinstance(text, str):
        text = text.read()
    try:
        _check_bracket_depth(text)
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        tag = re.search(r"tag '([^']*)'", str(err.problem or ""))
        what = f"the tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')!r}" if tag else str(err.problem)
        raise ParamsError(f"{where}: {what} is not allowed: params hold plain values only "
                          f"(numbers, strings, booleans, lists, mappings); remove the tag") from None
    except YamlLimitError as err:
        mark = err.problem_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        raise ParamsError(f"{where}: {err.problem}") from None
    except RecursionError:
        raise ParamsError(f"{source}: nested too deeply to read") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{where}: not valid YAML ({problem}); check the brackets, quotes and "
                          f"indentation there") from None


def load_yaml(path: os.PathLike, _seen: tuple = ()) -> dict:
    """A YAML mapping. A params profile may start from another one: ``extends: FILE`` (a
    path relative to this file) takes that profile and puts this file's keys over it
    (mappings merged key by key, anything else replaced), e.g. the tuning profile of the
    default profile, which adds only ``tuning:``."""
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"params file {str(p)!r} does not exist")
    with open(p) as fh:
        data = yaml_load(fh, source=str(p)) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"params file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ParamsError(f"{p}: extends must name one params file, got {base!r}")
    base_path = (p.parent / base).resolve()
    if base_path in _seen or base_path == p.resolve():
        raise ParamsError(f"{p}: extends {base!r} makes a cycle")
    return _merged(load_yaml(base_path, _seen + (p.resolve(),)), data)


def _merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml_load(fh, source=str(SCHEMA_PATH))


def _path_of(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _schema_node(path) -> dict:
    node, schema = _schema(), _schema()
    for part in path:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        props = node.get("properties", {})
        if isinstance(part, str) and part in props:
            node = props[part]
        elif isinstance(part, int) and "items" in node:
            node = node["items"]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].split("/")[-1]]
    return node


def validate_structure(profile: dict, source: str = "params") -> None:
    """JSON-schema validation with errors that name the key and the valid choices."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    # a misspelt key also makes a required one "missing": report the misspelling first
    errors = sorted(validator.iter_errors(profile),
                    key=lambda e: (len(e.absolute_path), e.validator != "additionalProperties", e.message))
    if not errors:
        return
    err = errors[0]
    where = _path_of(err)
    if err.validator == "additionalProperties":
        allowed = list(_schema_node(err.absolute_path).get("properties", {}))
        bad = [k for k in err.instance if k not in allowed]
        raise UnknownChoiceError(f"key in {source} at {where}", bad[0], allowed)
    if err.validator == "required":
        raise ParamsError(f"{source}: {where}: {err.message}")
    raise ParamsError(f"{source}: bad value at {where}: {err.message}")


def check_finite(value, source: str = "params", where: str = "") -> None:
    """No NaN or infinity anywhere (YAML's .nan / .inf): every range check of the schema
    is false for NaN, so they would pass it and fail (or train garbage) later."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{source}: bad value at {where or '(top level)'}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, source, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            check_finite(item, source, f"{where}.{k}" if where else str(k))


def check_results_dir(results_dir, source: str = "params") -> None:
    """results_dir is a folder of its own: not the filesystem root, the repository (where
    params/ lives) or a folder above it, where the pipeline would write data/, students/ ...
    beside the user's files."""
    if not isinstance(results_dir, str) or not results_dir.strip():
        raise ParamsError(f"{source}: results_dir must name a folder, got {results_dir!r}")
    path, root = Path(results_dir).expanduser().resolve(), project_root().resolve()
    if path == Path(path.anchor) or path == root or path in root.parents:
        what = ("the filesystem root" if path == Path(path.anchor) else
                "the repository itself" if path == root else f"a folder above the repository {root}")
        raise ParamsError(f"{source}: results_dir {results_dir!r} is {what}: outputs would be written among "
                          f"other files; give a folder of its own, e.g. results_dir: results")


def validate_names(profile: dict, source: str = "params") -> None:
    """Every dataset, arch and method name must exist (checked without building them)."""
    from kdbench.data import DATASETS, build_dataset  # noqa: F401  (registers datasets)
    from kdbench.methods import get_method
    from kdbench.models import check_model_name

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


#: the board's references: every cell needs them (Δ vs vanilla, Δ vs kd)
REFERENCE_METHODS = ("vanilla", "kd")


def pair_methods(profile: dict, teacher: str, student: str) -> List[str]:
    """The methods one pair runs: the profile's ``methods`` less the pair's
    ``exclude_methods`` (in the profile's order)."""
    for pair in profile["pairs"]:
        if pair["teacher"] == teacher and pair["student"] == student:
            excluded = set(pair.get("exclude_methods") or ())
            return [m for m in profile["methods"] if m not in excluded]
    raise UnknownChoiceError("pair of this profile", f"{teacher}->{student}",
                             [f"{p['teacher']}->{p['student']}" for p in profile["pairs"]])


def _check_excluded_methods(profile: dict, source: str) -> None:
    """Every name in a pair's ``exclude_methods`` is a registered method (a profile that
    lists fewer methods may keep the exclusions), and not one of the board's references."""
    from kdbench.methods import iter_method_names

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
    import inspect

    import jsonschema

    from kdbench.data import DATASETS
    from kdbench.data.base import OPTION_TYPES

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


def with_defaults(profile: dict) -> dict:
    out = copy.deepcopy(PROFILE_DEFAULTS)
    for key, value in profile.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    for recipe in ("teacher_train", "student_train"):
        out[recipe] = {**RECIPE_DEFAULTS, **out.get(recipe, {})}
    out["datasets"] = {k: dict(v or {}) for k, v in out["datasets"].items()}
    return out


def recipe_for(profile: dict, key: str, dataset: str) -> Dict[str, Any]:
    """The training recipe ``key`` ("teacher_train" / "student_train") of one dataset: the
    profile's recipe with its ``per_dataset[dataset]`` entries over it (e.g. more
    ``student_shots`` on a dataset whose task needs more data)."""
    base = dict(profile[key])
    return {**{k: v for k, v in base.items() if k != "per_dataset"}, **((base.get("per_dataset") or {}).get(dataset) or {})}


def validate_profile(profile: dict, source: str = "params") -> dict:
    """Validate a profile (structure, then names, then method hyperparameters, then every
    pair x method with the method's ``check_pair``, then ``student_shots`` against the
    datasets' class sizes); returns it with defaults filled in. Raises a KDBenchError
    naming the problem."""
    from kdbench.teachers import check_teacher_specs, inline_teachers_file

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
            hp = method_hparams(method, pair["teacher"], pair["student"], full.get("method_params"))
            check_method_pair(method, pair["teacher"], pair["student"], hp)
    _check_student_shots(full, source)
    from kdbench.tuning import validate_tuning

    validate_tuning(full, source)
    return full


def load_profile(path: os.PathLike) -> dict:
    return validate_profile(load_yaml(path), source=str(path))


def load_profile_with_overrides(path: os.PathLike, overrides: Optional[List[str]] = None) -> dict:
    """``path`` with ``--set KEY=VALUE`` overrides applied, validated. An error that the
    file alone does not have is blamed on the command line's ``--set``, not on the file."""
    raw_file = load_yaml(path)
    raw = apply_overrides(raw_file, overrides or [])
    try:
        return validate_profile(raw, source=str(path))
    except KDBenchError:
        if not overrides:
            raise
        try:
            validate_profile(copy.deepcopy(raw_file), source=str(path))
        except KDBenchError:
            pass
        else:  # the file alone is valid: the overrides broke it
            sets = " ".join(f"--set {o}" for o in overrides)
            validate_profile(raw, source=f"the command line ({sets})")
        raise


# --------------------------------------------------------------------------- pairs
_META_MODELS: Dict[str, Any] = {}


def meta_model(arch: str):
    """``arch`` built on the ``meta`` device (real shapes, no memory, no values), cached
    per arch: what ``Distiller.check_pair`` gets at validation."""
    if arch not in _META_MODELS:
        import torch

        from kdbench.models import create_model
        from kdbench.models.staged import skip_init

        with torch.device("meta"), skip_init():
            _META_MODELS[arch] = create_model(arch, 10)
    return _META_MODELS[arch]


def check_method_pair(method: str, teacher: str, student: str, hparams: dict) -> None:
    """``get_method(method).check_pair`` on meta-device models of the pair (a
    ``PairError`` naming method, pair and reason when the method cannot run it)."""
    from kdbench.methods import get_method

    cls = get_method(method)
    if _inherits_default_check(cls):
        return  # the default accepts every pair: build nothing
    t = meta_model(teacher) if cls.needs_teacher else None
    cls.check_pair(t, meta_model(student), hparams)


def _inherits_default_check(cls) -> bool:
    from kdbench.methods.base import Distiller

    return getattr(cls.check_pair, "__func__", None) is Distiller.check_pair.__func__


# --------------------------------------------------------------------------- student_shots
def _check_student_shots(full: dict, source: str) -> None:
    from kdbench.data.base import min_train_class_count

    for name, options in full["datasets"].items():
        shots = recipe_for(full, "student_train", name).get("student_shots")
        if not shots:
            continue
        smallest = min_train_class_count(name, options)
        if smallest is not None and shots > smallest:
            raise ParamsError(
                f"{source}: student_train.student_shots = {shots} images per class, but the smallest class of "
                f"dataset {name!r} has {smallest} training images with these options; use at most {smallest}")


# --------------------------------------------------------------------------- methods
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
    """``"teacher->student"`` with two valid arch names (a pair the profile does not use is fine)."""
    from kdbench.models import check_model_name

    parts = str(pair).split("->")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ParamsError(f"{where}: {pair!r} must look like 'teacher->student', e.g. 'resnet56->resnet20'")
    for arch in parts:
        try:
            check_model_name(arch.strip())
        except UnknownChoiceError as err:
            hint = f" (did you mean {pair.replace(arch, err.suggestion)!r}?)" if err.suggestion else ""
            raise ParamsError(f"{where}: {pair!r} names an unknown arch {arch.strip()!r}{hint}; "
                              f"`kdbench list archs` lists the valid ones") from None


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


def method_hparams(method: str, teacher: Optional[str], student: str,
                   overrides: Optional[dict] = None, params_dir: Optional[Path] = None,
                   tuned: Optional[dict] = None) -> dict:
    """A method's hyperparameters: params/methods/<method>.yaml ``defaults``, then its
    ``pairs["teacher->student"]`` entry, then ``tuned`` (the values a tuning selection
    chose, kdbench.tuning), then the profile's ``method_params[method]`` (a value the
    profile sets explicitly is fixed, never tuned). Validated against the method's
    declared names and the file's ``types:``."""
    from kdbench.methods import get_method

    cls = get_method(method)
    path = method_file(method, params_dir)
    types = None
    if path.is_file():
        spec = load_method_spec(path)
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


# --------------------------------------------------------------------------- run configs
@dataclass
class RunConfig:
    """Everything one training job needs. ``kind`` is "teacher" or "student"."""

    kind: str
    dataset: str
    dataset_options: Dict[str, Any]
    arch: str
    method: str
    seed: int
    recipe: Dict[str, Any]
    hparams: Dict[str, Any] = field(default_factory=dict)
    teacher: Optional[str] = None
    teacher_seed: Optional[int] = None
    device: str = "auto"
    threads: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    #: opt-in torch.compile of the training step's loss (CUDA only; CPU runs stay eager)
    compile: bool = False
    #: where ``hparams`` came from: "paper" (params/methods defaults), "tuned (N trials,
    #: val)" (a selection on the validation split, kdbench.tuning) or, for a tuning
    #: trial, "trial K/N"
    hparams_source: str = "paper"
    #: the tuning trial this run is (None: a benchmark run). A trial never reads the test split.
    trial: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def config_hash(self) -> str:
        """Hash of everything that determines the numbers (not where they are written)."""
        # threads count: CPU kernels (conv backward, reductions) split their sums by thread,
        # so another thread count gives other low bits, i.e. other numbers
        payload = {k: v for k, v in self.to_dict().items() if k not in ("device", "compile")}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def lr(self) -> float:
        return float((self.recipe.get("arch_lr") or {}).get(self.arch, self.recipe["lr"]))


def teacher_config(profile: dict, dataset: str, arch: str, seed: int) -> RunConfig:
    return RunConfig(
        kind="teacher", dataset=dataset, dataset_options=profile["datasets"][dataset], arch=arch,
        method="vanilla", seed=seed, recipe=dict(recipe_for(profile, "teacher_train", dataset), student_shots=None),
        hparams={}, device=profile["device"], threads=teacher_threads(profile),
        precision=profile["precision"], channels_last=profile["channels_last"], compile=profile["compile"])


def teacher_threads(profile: dict) -> int:
    """Torch threads of a teacher job: ``teacher_threads`` where the profile sets it (a
    teacher trains before any student of its cell can start: more threads there shorten the
    critical path), else ``threads``."""
    return int(profile.get("teacher_threads") or profile["threads"])


def student_config(profile: dict, dataset: str, teacher: str, student: str, method: str, seed: int,
                   *, tuned: Optional[dict] = None, hparams_source: Optional[str] = None,
                   trial: Optional[int] = None) -> RunConfig:
    """The run config of one student. Its hyperparameters: the method's paper values, or
    the values the profile's tuning selected for (dataset, pair, method) (kdbench.tuning:
    a ``tuned:`` selection file, or the ``tuning:`` trials' selection under results/).
    ``tuned``/``hparams_source`` given explicitly (tuning trials) skip that look-up."""
    from kdbench.methods import get_method

    if tuned is None and hparams_source is None:
        from kdbench.tuning import selected_values

        tuned, hparams_source = selected_values(profile, dataset, teacher, student, method)
    needs_teacher = get_method(method).needs_teacher
    t_seed = profile.get("teacher_seed")
    return RunConfig(
        kind="student", dataset=dataset, dataset_options=profile["datasets"][dataset], arch=student,
        method=method, seed=seed, recipe=recipe_for(profile, "student_train", dataset),
        hparams=method_hparams(method, teacher, student, profile.get("method_params"), tuned=tuned),
        teacher=teacher if needs_teacher else None,
        teacher_seed=(seed if t_seed is None else t_seed) if needs_teacher else None,
        device=profile["device"], threads=profile["threads"],
        precision=profile["precision"], channels_last=profile["channels_last"], compile=profile["compile"],
        hparams_source=hparams_source or "paper", trial=trial)


def check_in_profile(profile: dict, dataset: str, teacher: Optional[str], student: Optional[str], method: Optional[str]) -> None:
    if dataset not in profile["datasets"]:
        raise UnknownChoiceError("dataset of this profile", dataset, profile["datasets"])
    if method is not None and method not in profile["methods"]:
        from kdbench.methods import get_method
        get_method(method)  # a real method that the profile does not list is allowed


def apply_overrides(profile: dict, assignments: List[str]) -> dict:
    """``key.sub=value`` overrides (value parsed as YAML), e.g. ``student_train.epochs=3``."""
    out = copy.deepcopy(profile)
    for item in assignments or []:
        if "=" not in item:
            raise ParamsError(f"command line --set {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not p for p in key.split(".")):
            raise ParamsError(f"command line --set {item!r}: the key must look like key.sub=value")
        try:
            value = yaml_load(raw, source=f"--set {key}")
        except ParamsError as err:
            raise ParamsError(f"command line --set {item!r}: the value {raw!r} is not valid YAML ({err}); "
                              f"quote it or fix it, e.g. --set {key}=[1,2]") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"command line --set {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return out


def run_paths(results_dir: os.PathLike, kind: str, dataset: str, arch: str, seed: int,
              teacher: Optional[str] = None, method: Optional[str] = None) -> Path:
    root = Path(results_dir)
    if kind == "teacher":
        return root / "teachers" / dataset / arch / f"s{seed}"
    return root / "students" / dataset / f"{teacher}__{arch}" / method / f"s{seed}"
