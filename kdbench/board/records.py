"""Collection: the per-run records of a profile, as ``runs.csv``.

One record per student run (dataset, teacher, student, method, seed): the evaluation
record ``results/evals/{dataset}/{teacher}__{student}/{method}/s{seed}.json`` (written by
``kdbench evaluate``), completed from the run's own ``metrics.json`` (epochs, config hash,
calibration, the hyperparameters it ran with and their source) and from its teacher's
``metrics.json`` (``teacher_*`` columns: the teacher rows of the board are built from them).

``top1_best_test`` (the max over epochs of the test top-1, recorded only with the recipe's
``test_every_epoch``; empty otherwise) is the like-for-like number for papers that select
their epoch on the test split: the reproduction scorecard compares such entries with it
(:mod:`kdbench.board.published`); it is never a ranking metric. The :data:`PROVENANCE`
columns say where each run was computed (:func:`kdbench.engine.runtime.provenance`).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, List, Optional

from kdbench.config import layout
from kdbench.config.loading import pair_methods, teacher_seed_of
from kdbench.integrity import check_file
from kdbench.errors import KDBenchError
from kdbench.hparams import student_config

KEYS = ["dataset", "teacher", "student", "method"]
CELL = ["dataset", "teacher", "student"]

#: per-seed metrics aggregated into <name>_mean / <name>_std, in board order
METRICS = [
    "top1", "top1_sel", "top1_ood", "agreement", "agreement_ood", "expl_sim", "epg",
    "fss", "rs", "rs_residual", "unicam_epg_distilled", "unicam_epg_residual",
    "decision_consistency", "walk_partition_ari", "hierarchy_ari_tree", "tree_purity", "ece", "nll", "teacher_top1", "train_s", "train_img_s", "eval_s",
    "top1_best_test",   # like-for-like only (papers that select on the test split), never ranked
]
#: the teacher's numbers carried on every run (from the teacher's metrics.json): the
#: teacher row of a cell is built from these, column <name> of the teacher row = teacher_<name>
TEACHER_METRICS = ["top1", "top1_sel", "top1_ood", "ece", "nll", "train_s", "params", "epochs", "top1_best_test"]
#: constant per row (the student's size), taken from the first seed
CONSTANTS = ["params", "flops", "epochs"]
#: per-run columns of runs.csv besides KEYS and METRICS
#: per-stage lists, kept in runs.csv as JSON arrays (the teacher-tree table is built from them)
STAGE_LISTS = ["fss_stages", "tree_purity_stages", "tree_purity_chance_stages", "tree_purity_p95_stages",
               "probe_coarse_stages", "probe_fine_stages"]
#: where a run was computed: the keys of metrics.json's ``provenance`` (written by
#: kdbench.engine.runtime.provenance), one runs.csv column each; never part of the config hash
PROVENANCE = ["device_kind", "cpu_model", "cpu_capability", "gpu_name", "gpu_count", "gpu_capability",
              "torch_version", "cuda_version", "cudnn_version", "world_size", "global_batch_size", "precision",
              "compile", "channels_last"]
RUN_EXTRA = ["seed", "teacher_seed", "params", "flops", "epochs", "best_epoch", *STAGE_LISTS, "fss_estimator",
             "hparams", "hparams_source", "config_hash", "dataset_fingerprint", "top1_best_test_epoch", *PROVENANCE]
#: what the board says when a run record has no hparams_source (runs before the tuning stage)
DEFAULT_SOURCE = "paper"
#: read from the student run's metrics.json (the evaluation record wins where it has a value)
FROM_TRAIN = ("epochs", "best_epoch", "config_hash", "dataset_fingerprint", "train_s", "train_img_s", "params",
              "top1", "top1_sel", "top1_ood", "ece", "nll", "hparams", "hparams_source", "top1_best_test",
              "top1_best_test_epoch")


def num(x) -> Optional[float]:
    """A JSON number or None (NaN, None, bool and non-numbers are None)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def expected_runs(profile: dict) -> List[dict]:
    """Every student run of a profile: dataset, teacher, student, method, seed, teacher_seed."""
    out = []
    for dataset in profile["datasets"]:
        for pair in profile["pairs"]:
            for method in pair_methods(profile, pair["teacher"], pair["student"]):
                for seed in profile["seeds"]:
                    out.append({"dataset": dataset, "teacher": pair["teacher"], "student": pair["student"],
                                "method": method, "seed": int(seed),
                                "teacher_seed": teacher_seed_of(profile, seed)})
    return out


eval_path = layout.eval_record  # the historical name


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _read_whole(path: Path, problems: list, redo: str) -> Optional[dict]:
    """The JSON object in ``path``; None when it does not exist. A damaged one (unreadable,
    or not what was written: kdbench.integrity) goes to ``problems`` with the command that
    makes it again."""
    if not path.is_file():
        return None
    problem = check_file(path)
    blob = read_json(path) if problem is None else None
    if problem is None and not isinstance(blob, dict):
        problem = "is not a readable JSON object"
    if problem is not None:
        problems.append(f"{path} {problem} (make it again: {redo})")
        return None
    return blob


def _command(params: str, command: str, **options) -> str:
    opts = " ".join(f"--{k} {v}" for k, v in options.items())
    return f"kdbench {command} --params {params} {opts}"


def collect_records(profile: dict, results_dir: Optional[os.PathLike] = None, *, strict: bool = False,
                    params: str = "PARAMS") -> List[dict]:
    """The flat per-run records of a profile (see the module docstring). Missing
    evaluations are an error with ``strict``, else skipped with a warning. Never a silent
    drop or a foreign number: a damaged record or metrics.json (kdbench.integrity), or a
    run trained with another config than the profile implies, is a KDBenchError naming
    each one and the command (``params``: the profile as given on the command line) that
    makes it again."""
    root = Path(results_dir if results_dir is not None else profile.get("results_dir", "results"))
    records, missing, problems = [], [], []
    for run in expected_runs(profile):
        ev_path = eval_path(root, run["dataset"], run["teacher"], run["student"], run["method"], run["seed"])
        where = dict(dataset=run["dataset"], teacher=run["teacher"], student=run["student"], method=run["method"],
                     seed=run["seed"])
        ev = _read_whole(ev_path, problems, _command(params, "evaluate", **where))
        if ev is None:
            if ev_path.is_file():
                continue
            missing.append(ev_path)
            continue
        sdir = layout.run_dir(root, "student", run["dataset"], run["student"], run["seed"],
                         teacher=run["teacher"], method=run["method"])
        redo_student = _command(params, "distill", **where) + " --force"
        train = _read_whole(sdir / layout.METRICS, problems, redo_student) or {}
        expected = _expected_hash(profile, run)
        if train and train.get("config_hash") != expected:
            problems.append(f"{sdir} was trained with another config than this profile's (config_hash "
                            f"{train.get('config_hash')}, the profile's {expected}) (train it again: {redo_student})")
        t_seed = ev.get("teacher_seed") if ev.get("teacher_seed") is not None else run["teacher_seed"]
        tdir = layout.run_dir(root, "teacher", run["dataset"], run["teacher"], t_seed)
        teacher = _read_whole(tdir / layout.METRICS, problems, _command(
            params, "train-teacher", dataset=run["dataset"], arch=run["teacher"], seed=t_seed) + " --force") or {}
        rec = {k: train.get(k) for k in FROM_TRAIN}
        prov = train.get("provenance") if isinstance(train.get("provenance"), dict) else {}
        rec.update({k: prov.get(k) for k in PROVENANCE})
        rec.update({k: v for k, v in ev.items() if v is not None or k not in rec})
        rec.update({k: run[k] for k in KEYS + ["seed"]})
        rec.setdefault("teacher_seed", run["teacher_seed"])
        if rec.get("teacher_seed") is None:
            rec["teacher_seed"] = t_seed
        for k in TEACHER_METRICS:
            rec[f"teacher_{k}"] = teacher.get(k)
        records.append(rec)
    if problems:
        problems = list(dict.fromkeys(problems))
        raise KDBenchError(f"{len(problems)} file(s) of this board are damaged or of another config, and no board "
                           f"is written: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
                           + " (the pipeline, run again, redoes damaged files itself)")
    if missing:
        listing = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        msg = f"{len(missing)} of {len(missing) + len(records)} runs have no evaluation yet: {listing}"
        if strict:
            raise KDBenchError(msg + " (run the pipeline: snakemake --cores all)")
        print(f"[kdbench] warning: {msg}", file=sys.stderr)
    return records


def _expected_hash(profile: dict, run: dict) -> str:
    """The config hash the profile implies for one student run (what its metrics.json must say)."""
    return student_config(profile, run["dataset"], run["teacher"], run["student"], run["method"],
                          run["seed"]).config_hash


def hparams_text(value) -> str:
    """A run's hyperparameters as compact, sorted JSON (the runs.csv form); '' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def runs_frame(records: Iterable[dict]):
    """runs.csv as a DataFrame: one row per run, the standard columns first (missing ones
    empty), any further record keys after them."""
    import pandas as pd

    records = [dict(r) for r in records]
    for r in records:
        for key in STAGE_LISTS:
            if isinstance(r.get(key), (list, tuple)):
                r[key] = json.dumps([num(v) for v in r[key]])
        r["hparams"] = hparams_text(r.get("hparams"))
        if not r.get("hparams_source"):
            r["hparams_source"] = DEFAULT_SOURCE
        for m in METRICS:
            if m in r:
                r[m] = num(r[m])
    teacher_cols = [f"teacher_{k}" for k in TEACHER_METRICS if f"teacher_{k}" not in METRICS]
    base = (KEYS + ["seed", "teacher_seed"] + METRICS + teacher_cols
            + [c for c in RUN_EXTRA if c not in ("seed", "teacher_seed")])
    extra = sorted({k for r in records for k in r} - set(base))
    extra = [k for k in extra if not any(isinstance(r.get(k), (dict, list)) for r in records)]
    df = pd.DataFrame.from_records(records, columns=base + extra)
    for m in METRICS + teacher_cols:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    df["seed"] = pd.to_numeric(df["seed"]).astype("int64") if len(df) else df["seed"]
    return df.reset_index(drop=True)


def teacher_values(g):
    """One row per teacher seed of a cell's runs: the teacher_* columns, renamed."""
    cols = [f"teacher_{k}" for k in TEACHER_METRICS if f"teacher_{k}" in g.columns]
    sub = g.dropna(subset=["teacher_top1"]) if "teacher_top1" in g else g.iloc[0:0]
    if "teacher_seed" in sub:
        if sub["teacher_seed"].notna().any():  # rows without a teacher seed (vanilla) are the same teacher
            sub = sub[sub["teacher_seed"].notna()]
        sub = sub.groupby("teacher_seed", dropna=False, sort=True)[cols].first()
    return sub[cols].rename(columns=lambda c: c[len("teacher_"):])
