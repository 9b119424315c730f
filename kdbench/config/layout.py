"""The results layout: the one owner of every path under a profile's ``results_dir``.

Each entry is a template relative to ``results_dir`` whose fields are Snakemake-style
wildcards (``{dataset}``, ``{teacher}``, ...). The Python code formats them with
:func:`path` (or the named helpers below); the Snakemake rules (workflow/rules/common.smk:
``r(layout.X)``) use them as wildcard patterns, with :func:`pattern` where a rule fixes
some fields and leaves the rest as wildcards. Renaming a folder here renames it for both.

Inside a run folder (a teacher's or a student's) the file names are fixed:
``model.pt``, ``metrics.json`` (written last: the run's completion marker),
``history.csv``, ``checkpoint.pt``. Leaf layer: imports nothing of kdbench.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Optional, Union

# --------------------------------------------------------------------------- run folders
MODEL = "model.pt"
METRICS = "metrics.json"

#: the prepared dataset (tensors) and its description, one folder per dataset
DATA = "data/{dataset}/data.pt"
DATA_META = "data/{dataset}/meta.json"
#: a teacher run (trained or imported)
TEACHER_DIR = "teachers/{dataset}/{arch}/s{seed}"
#: a student run: one (dataset, pair, method, seed)
STUDENT_DIR = "students/{dataset}/{teacher}__{student}/{method}/s{seed}"
#: the evaluation record of one student run, and the folder of its figures
EVAL = "evals/{dataset}/{teacher}__{student}/{method}/s{seed}.json"
FIGURES = "figures/{dataset}/{teacher}__{student}/{method}"
#: the tuning protocol: one folder per (dataset, pair, method), a trial per seed
TUNING_CELL = "tuning/{dataset}/{teacher}__{student}/{method}"
TRIAL_DIR = TUNING_CELL + "/t{trial}/s{seed}"
SELECTION = TUNING_CELL + "/selection.json"
TUNED_EXPORT = "tuning/tuned.yaml"
#: a run's two final outputs, as the rules name them
TEACHER_MODEL = f"{TEACHER_DIR}/{MODEL}"
TEACHER_METRICS = f"{TEACHER_DIR}/{METRICS}"
STUDENT_MODEL = f"{STUDENT_DIR}/{MODEL}"
STUDENT_METRICS = f"{STUDENT_DIR}/{METRICS}"
TRIAL_METRICS = f"{TRIAL_DIR}/{METRICS}"
#: the board's tables and figures
BOARD = "leaderboard"
#: every job's log (one per job; the evaluation job covers every method of a cell and seed)
LOG_DATA = "logs/data/{dataset}.log"
LOG_TEACHER = "logs/teachers/{dataset}/{arch}/s{seed}.log"
LOG_STUDENT = "logs/students/{dataset}/{teacher}__{student}/{method}/s{seed}.log"
LOG_EVAL = "logs/evals/{dataset}/{teacher}__{student}/s{seed}.log"
LOG_TRIAL = "logs/tuning/{dataset}/{teacher}__{student}/{method}/t{trial}/s{seed}.log"
LOG_SELECTION = "logs/tuning/{dataset}/{teacher}__{student}/{method}/selection.log"
LOG_EXPORT = "logs/tuning/export.log"
LOG_BOARD = "logs/leaderboard.log"

PathLike = Union[str, os.PathLike]


def fields(template: str) -> list:
    """The wildcard names of a template, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def joined(template: str, first: str, second: str, name: str) -> str:
    """``template`` with the adjacent fields ``{first}/{second}`` as one wildcard ``{name}``
    (a rule that matches only some (first, second) combinations, e.g. the imported
    teachers' ``{dataset_arch}``)."""
    part = "{" + first + "}/{" + second + "}"
    if part not in template:
        raise ValueError(f"layout.joined: {template!r} has no {part}")
    return template.replace(part, "{" + name + "}")


def pattern(template: str, **fixed) -> str:
    """``template`` with the ``fixed`` fields filled in and every other field left as a
    ``{wildcard}`` (what a Snakemake rule that fixes some fields needs)."""
    return template.format(**{name: fixed.get(name, "{" + name + "}") for name in fields(template)})


def path(results_dir: PathLike, template: str, **values) -> Path:
    """``template`` under ``results_dir`` with every field given."""
    missing = [name for name in fields(template) if name not in values]
    if missing:
        raise TypeError(f"layout.path: {template!r} needs {', '.join(missing)}")
    return Path(results_dir) / template.format(**values)


# --------------------------------------------------------------------------- named helpers
def run_dir(results_dir: PathLike, kind: str, dataset: str, arch: str, seed: int,
            teacher: Optional[str] = None, method: Optional[str] = None) -> Path:
    """A teacher's (``kind="teacher"``) or a student's run folder."""
    if kind == "teacher":
        return path(results_dir, TEACHER_DIR, dataset=dataset, arch=arch, seed=seed)
    return path(results_dir, STUDENT_DIR, dataset=dataset, teacher=teacher, student=arch, method=method, seed=seed)


def teacher_model(results_dir: PathLike, dataset: str, arch: str, seed: int) -> Path:
    """The model file of a teacher run (what a student distils from)."""
    return run_dir(results_dir, "teacher", dataset, arch, seed) / MODEL


def prepared_data(results_dir: PathLike, dataset: str) -> Path:
    return path(results_dir, DATA, dataset=dataset)


def eval_record(results_dir: PathLike, dataset: str, teacher: str, student: str, method: str, seed: int) -> Path:
    return path(results_dir, EVAL, dataset=dataset, teacher=teacher, student=student, method=method, seed=seed)


def figures_dir(results_dir: PathLike, dataset: str, teacher: str, student: str, method: str) -> Path:
    return path(results_dir, FIGURES, dataset=dataset, teacher=teacher, student=student, method=method)


def tuning_cell(results_dir: PathLike, dataset: str, teacher: str, student: str, method: str) -> Path:
    return path(results_dir, TUNING_CELL, dataset=dataset, teacher=teacher, student=student, method=method)


def trial_dir(results_dir: PathLike, dataset: str, teacher: str, student: str, method: str,
              trial: int, seed: int) -> Path:
    return path(results_dir, TRIAL_DIR, dataset=dataset, teacher=teacher, student=student, method=method,
                trial=trial, seed=seed)


def selection(results_dir: PathLike, dataset: str, teacher: str, student: str, method: str) -> Path:
    return path(results_dir, SELECTION, dataset=dataset, teacher=teacher, student=student, method=method)


def tuned_export(results_dir: PathLike) -> Path:
    return path(results_dir, TUNED_EXPORT)


def board_dir(results_dir: PathLike) -> Path:
    return path(results_dir, BOARD)
