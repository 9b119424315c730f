"""Params profiles as data: YAML loading (bounded, ``extends:``), the profile's defaults
and structure (JSON schema), recipes, the pairs' methods and ``--set`` overrides.

A *profile* (params/*.yaml) describes a whole benchmark: datasets, teacher/student pairs,
methods, seeds and the training recipes. This module reads and shapes it; checking its
names against the registries and building run configs is :mod:`kdbench.profile`'s job.
Part of the leaf layer :mod:`kdbench.config` (imports nothing of kdbench but errors).
"""
from __future__ import annotations

import copy
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List

import yaml

from kdbench.errors import KDBenchError, UnknownChoiceError

PACKAGE_DIR = Path(__file__).resolve().parent.parent


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
    # score the test split after every epoch: history.csv's test_top1 and metrics.json's
    # top1_best_test (the like-for-like number for papers that select their epoch on the
    # test split; never a ranking metric). Off: nothing is scored and the field stays empty.
    # Its default is left out of the config hash (config.run.HASH_NEUTRAL_RECIPE).
    "test_every_epoch": False,
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
    default profile, which adds only ``tuning:``. The parent's ``description`` describes
    another board: an extending file without its own gets the parent's marked as extended
    (``<parent's> — extended by <file> (its own keys: ...)``), never the parent's as is
    (a file written before the rule keeps working)."""
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
    merged = _merged(load_yaml(base_path, _seen + (p.resolve(),)), data)
    if not isinstance(data.get("description"), str) or not data["description"].strip():
        own = ", ".join(sorted(data)) or "none"
        merged["description"] = (f"{merged.get('description') or base} — extended by {p.name} "
                                 f"(its own keys: {own})")
    return merged


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


def teacher_threads(profile: dict) -> int:
    """Torch threads of a teacher job: ``teacher_threads`` where the profile sets it (a
    teacher trains before any student of its cell can start: more threads there shorten the
    critical path), else ``threads``."""
    return int(profile.get("teacher_threads") or profile["threads"])


#: the board's references: every cell needs them (Δ vs vanilla, Δ vs kd)
REFERENCE_METHODS = ("vanilla", "kd")


def teacher_seed_of(profile: dict, seed: int) -> int:
    """The teacher seed a student of seed ``seed`` distils from: the profile's
    ``teacher_seed``, or (``teacher_seed: null``) the student's own seed."""
    t_seed = profile.get("teacher_seed")
    return int(seed) if t_seed is None else int(t_seed)


def pair_methods(profile: dict, teacher: str, student: str) -> List[str]:
    """The methods one pair runs: the profile's ``methods`` less the pair's
    ``exclude_methods`` (in the profile's order)."""
    for pair in profile["pairs"]:
        if pair["teacher"] == teacher and pair["student"] == student:
            excluded = set(pair.get("exclude_methods") or ())
            return [m for m in profile["methods"] if m not in excluded]
    raise UnknownChoiceError("pair of this profile", f"{teacher}->{student}",
                             [f"{p['teacher']}->{p['student']}" for p in profile["pairs"]])


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
