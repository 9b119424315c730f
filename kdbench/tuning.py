"""The hyperparameter protocol: search spaces, a fixed candidate set, trials scored on the
validation split only, and the selection the benchmark runs then use.

- A method's ``params/methods/<m>.yaml`` keeps its paper values as ``defaults`` and names a
  ``search`` space: a few axes, each ``{low, high}`` (``log: true`` for a log scale) or
  ``{choices: [...]}``. A method without hyperparameters (vanilla) has nothing to tune.
- A profile with ``tuning: {trials: N, seeds: [...]}`` runs, per (dataset, pair, method),
  N trials x the tuning seeds. Trial 0 is the paper values (the pair's, with its per-pair
  overrides); trials 1..N-1 are the first points of an unscrambled Sobol' sequence over
  the axes (point 0, the all-lowest corner, skipped), or, when every axis is a list of
  choices, the grid in the order the axes and choices are written. No randomness: the DAG
  is known up front and a rerun draws the same candidates.
- A trial is a plain training job (``kdbench tune-trial``) that builds its dataset
  without the test splits (:func:`validation_only`: touching one raises) and records the
  validation accuracy of its last epoch.
- :func:`select` picks the trial with the highest mean (over the tuning seeds) last-epoch
  validation accuracy; ties go to the lowest trial number (so the paper values win a tie).
  A trial whose loss diverged scores below every finished one.
- The benchmark runs of that profile then use the selected values
  (``RunConfig.hparams_source = "tuned (N trials, val)"``). A profile can instead point at
  a committed selection file (``tuned: params/tuned/default.yaml``, written by
  ``kdbench tune-export``), so that it does not re-run the trials.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from kdbench.config import layout
from kdbench.config.layout import selection as selection_path  # noqa: F401  (kdbench.tuning's names of the
from kdbench.config.layout import trial_dir  # noqa: F401                        layout's tuning paths)
from kdbench.config.layout import tuned_export as export_path  # noqa: F401
from kdbench.config.layout import tuning_cell as cell_dir  # noqa: F401
from kdbench.config.loading import pair_methods, recipe_for
from kdbench.config.run import hashed_recipe
from kdbench.data.splits import HELD_OUT, HeldOutSplits, validation_only  # noqa: F401  (the trials' view of a dataset)
from kdbench.io import write_json
from kdbench.methods import get_method
from kdbench.hparams import (TuningError, check_axis, fixed_axes, hparams_source, is_tuned,  # noqa: F401
                             load_selection_file, method_hparams, profile_space, resolve, search_space,
                             selected_values, student_config, tuning_of)

SCORE = "mean over the tuning seeds of the last epoch's validation top-1"
TIE_BREAK = "highest score; ties: the lowest trial number (trial 0 = the paper values); diverged trials score lowest"






# --------------------------------------------------------------------------- search spaces




def _axis_value(axis: dict, u: float):
    """The axis value at u in [0, 1): a choice by equal bins, else linear or log-linear,
    rounded to 3 significant digits (readable, and the same on every machine)."""
    if "choices" in axis:
        choices = axis["choices"]
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    low, high = float(axis["low"]), float(axis["high"])
    if axis.get("log", False):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    return float(f"{value:.3g}")


def _grid(space: Dict[str, dict], base: dict) -> List[dict]:
    """Every combination of the choices, in the order the axes and choices are written,
    without the paper values' own point (that is trial 0)."""
    names = list(space)
    first = {k: base[k] for k in names}
    points = (dict(zip(names, p)) for p in itertools.product(*(space[k]["choices"] for k in names)))
    return [p for p in points if p != first]


def max_trials(space: Dict[str, dict], base: dict) -> Optional[int]:
    """The most trials a space supports (1 + the grid's other points when every axis is a
    list of choices), or None (no limit)."""
    if space and all("choices" in a for a in space.values()):
        return 1 + len(_grid(space, base))
    return None


def candidate_values(space: Dict[str, dict], base: dict, trials: int) -> List[dict]:
    """The values of the search axes of trials 0..trials-1 (see :func:`_candidate_values`)."""
    key = json.dumps([space, {k: base[k] for k in space}, trials], default=repr)  # axis order matters
    return copy.deepcopy(_cached_candidates(key))


@lru_cache(maxsize=1024)
def _cached_candidates(key: str) -> List[dict]:
    space, base, trials = json.loads(key)
    return _candidate_values(space, base, trials)


def _candidate_values(space: Dict[str, dict], base: dict, trials: int) -> List[dict]:
    """The values of the search axes of trials 0..trials-1: trial 0 = ``base`` (the paper
    values), then the grid (every axis a list of choices) or the unscrambled Sobol' points
    1, 2, ... mapped onto the axes, skipping a point whose (rounded) values an earlier trial
    already has: no two trials are the same."""
    if not space:
        return []
    names = list(space)
    out = [{k: base[k] for k in names}]
    n = trials - 1
    if n <= 0:
        return out[:trials]
    limit = max_trials(space, base)
    if limit is not None:
        if trials > limit:
            raise TuningError(f"tuning.trials={trials} is more than the {limit} trials this search space has "
                              f"(the paper values + a grid of {limit - 1} other points): use at most {limit}")
        return out + _grid(space, base)[:n]
    from scipy.stats import qmc

    m = max(1, math.ceil(math.log2(2 * (n + 1))))
    while len(out) < trials:
        points = qmc.Sobol(len(names), scramble=False).random_base2(m)
        out = out[:1]
        for row in points[1:]:
            values = {k: _axis_value(space[k], float(u)) for k, u in zip(names, row)}
            if values not in out:
                out.append(values)
            if len(out) == trials:
                break
        m += 1
        if m > 20:
            raise TuningError(f"cannot draw {trials} distinct candidates from the search space {space}")
    return out


# --------------------------------------------------------------------------- profiles








def tuned_methods(profile: dict, pair: Optional[dict] = None) -> List[str]:
    """The methods with trials: of the whole profile, or of one pair (less its
    ``exclude_methods``)."""
    methods = profile["methods"] if pair is None else pair_methods(profile, pair["teacher"], pair["student"])
    return [m for m in methods if is_tuned(profile, m)]


def candidates(profile: dict, teacher: str, student: str, method: str) -> List[dict]:
    """Per trial, the values of the method's search axes (trial 0: the pair's paper values)."""
    base = method_hparams(method, teacher, student)
    return candidate_values(profile_space(profile, method), base, int(profile["tuning"]["trials"]))


def trial_config(profile: dict, dataset: str, teacher: str, student: str, method: str, trial: int, seed: int):
    """The run config of one tuning trial (a student run on the trial's values)."""
    cands = candidates(profile, teacher, student, method)
    if not 0 <= trial < len(cands):
        raise TuningError(f"trial {trial} of {method!r}: this profile has trials 0..{len(cands) - 1}")
    return student_config(profile, dataset, teacher, student, method, seed, tuned=cands[trial],
                          hparams_source=f"trial {trial}/{len(cands)}", trial=trial)


def validate_tuning(profile: dict, source: str = "params", methods: Optional[Sequence[str]] = None) -> None:
    """Checks of the ``tuning:`` / ``tuned:`` keys (called by validate_profile; ``methods``:
    only these methods' search spaces and candidates)."""
    tuning, tuned = tuning_of(profile), profile.get("tuned")
    if tuning and tuned:
        raise TuningError(f"{source}: give either tuning: (run the trials) or tuned: (use a selection file), not both")
    if tuning:
        for method in profile["methods"]:
            if methods is not None and method not in methods:
                continue
            cls = get_method(method)
            space = profile_space(profile, method)
            if not space and method_hparams(method, None, "-") and not fixed_axes(profile, method):
                raise TuningError(f"{source}: method {method!r} has hyperparameters but no search space: add a "
                                  f"search: block to params/methods/{method}.yaml (every method gets the same trials)")
            for pair in profile["pairs"]:
                if method not in pair_methods(profile, pair["teacher"], pair["student"]):
                    continue
                for values in candidates(profile, pair["teacher"], pair["student"], method):
                    cls.check_hparams(method_hparams(method, pair["teacher"], pair["student"],
                                                     profile.get("method_params"), tuned=values))
    if tuned:
        load_selection_file(resolve(tuned))




# --------------------------------------------------------------------------- selection
def trial_score(val_top1s: List[Optional[float]]) -> Optional[float]:
    """Mean over seeds (exactly rounded, independent of order); None if any diverged."""
    if not val_top1s or any(v is None or not math.isfinite(v) for v in val_top1s):
        return None
    return math.fsum(val_top1s) / len(val_top1s)


def select(trials: List[dict]) -> dict:
    """The winning trial of ``[{trial, values, val_top1: [per seed]}, ...]``: highest
    score (:func:`trial_score`); ties: the lowest trial number. Deterministic."""
    if not trials:
        raise TuningError("no trials to select from")
    scored = [(trial_score(t["val_top1"]), int(t["trial"]), t) for t in trials]
    best = max(scored, key=lambda s: (s[0] is not None, -math.inf if s[0] is None else s[0], -s[1]))
    return best[2]


def read_trials(profile: dict, dataset: str, teacher: str, student: str, method: str) -> List[dict]:
    """Every trial's values and per-seed validation accuracy (its metrics.json files)."""
    results = profile["results_dir"]
    seeds = list(profile["tuning"]["seeds"])
    out = []
    for k, values in enumerate(candidates(profile, teacher, student, method)):
        cfg_hash = None
        vals = []
        for seed in seeds:
            path = trial_dir(results, dataset, teacher, student, method, k, seed) / layout.METRICS
            if not path.is_file():
                raise TuningError(f"{path} not found: run the trial first (kdbench tune-trial --params ... "
                                  f"--dataset {dataset} --teacher {teacher} --student {student} --method {method} "
                                  f"--trial {k} --seed {seed})")
            rec = json.loads(path.read_text())
            expected = trial_config(profile, dataset, teacher, student, method, k, seed).config_hash
            if rec.get("config_hash") != expected:
                raise TuningError(f"{path} is from another config ({rec.get('config_hash')} != {expected}): re-run the trial")
            vals.append(rec.get("val_top1"))
            cfg_hash = rec.get("config_hash")
        out.append({"trial": k, "values": values, "val_top1": vals, "score": trial_score(vals),
                    "config_hash_s0": cfg_hash})
    return out


def selection_record(profile: dict, dataset: str, teacher: str, student: str, method: str) -> dict:
    trials = read_trials(profile, dataset, teacher, student, method)
    win = select(trials)
    n = len(trials)
    return {"dataset": dataset, "teacher": teacher, "student": student, "method": method,
            "trial": win["trial"], "values": win["values"], "score": win["score"],
            "hparams_source": hparams_source(n), "n_trials": n, "seeds": list(profile["tuning"]["seeds"]),
            "score_rule": SCORE, "tie_break": TIE_BREAK,
            "trials": [{k: t[k] for k in ("trial", "values", "val_top1", "score")} for t in trials]}


def write_selection(profile: dict, dataset: str, teacher: str, student: str, method: str) -> Path:
    rec = selection_record(profile, dataset, teacher, student, method)
    path = selection_path(profile["results_dir"], dataset, teacher, student, method)
    write_json(rec, path)
    return path


#: the keys of a selection that a params/tuned file's entry keeps
ENTRY_KEYS = ("dataset", "teacher", "student", "method", "trial", "values", "score", "trials")


def selection_entries(profile: dict, methods: Optional[List[str]] = None) -> List[dict]:
    """The entries (:data:`ENTRY_KEYS`) of the profile's selections, per dataset, pair and
    tuned method (only ``methods``, where given); a missing selection is an error."""
    entries = []
    for dataset in profile["datasets"]:
        for pair in profile["pairs"]:
            for method in tuned_methods(profile, pair):
                if methods is not None and method not in methods:
                    continue
                path = selection_path(profile["results_dir"], dataset, pair["teacher"], pair["student"], method)
                if not path.is_file():
                    raise TuningError(f"{path} not found: run the selection first (kdbench tune-select)")
                rec = json.loads(path.read_text())
                entries.append({k: rec[k] for k in ENTRY_KEYS})
    return entries


def _dump(doc) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


def export(profile: dict, source: str) -> str:
    """The profile's selections as one YAML document (what params/tuned/*.yaml holds)."""
    tuning = profile["tuning"]
    doc = {"protocol": {"profile": source, "trials": int(tuning["trials"]), "seeds": list(tuning["seeds"]),
                        "score": SCORE, "tie_break": TIE_BREAK,
                        # hash-neutral defaults left out, as in the config hash: an export is unchanged
                        "recipe": {d: hashed_recipe(recipe_for(profile, "student_train", d))
                                   for d in profile["datasets"]},
                        "datasets": profile["datasets"]},
           "entries": selection_entries(profile)}
    header = (f"# Hyperparameters selected on the validation split by the tuning profile {source}:\n"
              f"# {int(tuning['trials'])} trials per (dataset, pair, method), seeds {list(tuning['seeds'])}.\n"
              f"# Regenerate: snakemake --cores all tune --configfile {source}\n"
              f"#             cp {export_path(profile['results_dir'])} <this file>\n")
    return header + _dump(doc)


def _entry_key(entry: dict) -> tuple:
    return tuple(entry.get(k) for k in ("dataset", "teacher", "student", "method"))


def merge_entries(text: str, entries: List[dict], where: str = "the tuned file") -> str:
    """``text`` (a params/tuned file, as :func:`export` writes it) with ``entries`` put in:
    the entry of the same dataset, pair and method replaced where it stands, a new one
    appended. Every other byte (header, protocol, the other entries) stays as it was."""
    import yaml

    head, sep, body = text.partition("\nentries:\n")
    if not sep:
        raise TuningError(f"{where} has no top-level `entries:` list to merge into")
    lead, *items = re.split(r"(?m)^(?=- )", body)
    items = [c if c.endswith("\n") else c + "\n" for c in items]
    index = {_entry_key(yaml.safe_load(c)[0]): i for i, c in enumerate(items)}
    expected = [yaml.safe_load(c)[0] for c in items]
    for entry in entries:
        i = index.setdefault(_entry_key(entry), len(items))
        if i == len(items):
            items.append("")
            expected.append(None)
        items[i], expected[i] = _dump([entry]), entry
    out = head + sep + lead + "".join(items)
    doc = yaml.safe_load(out)
    if doc.get("entries") != expected or doc.get("protocol") != yaml.safe_load(text).get("protocol"):
        raise TuningError(f"{where}: merging the new selections would change it beyond their entries "
                          f"(not a file tune-export wrote?); merge them by hand")
    return out


def restricted_profile(tuning_profile: Path, method: str) -> str:
    """A tuning profile of one method: ``tuning_profile`` (extended) with ``methods: [method]``,
    so that only its trials and selections are in the DAG (``kdbench tune-method``)."""
    return _dump({"extends": str(Path(tuning_profile).resolve()),
                  "description": f"{method} only, of the tuning profile {tuning_profile} (kdbench tune-method)",
                  "methods": [method]})


# --------------------------------------------------------------------------- using a selection






def rerun_key(profile: dict, dataset: str, teacher: str, student: str, method: str, seed: int) -> str:
    """What a benchmark run's numbers depend on, known before any job runs (the Snakefile's
    rerun trigger): its config hash; for a run whose values the profile's own trials
    select, the hash of its paper config and of every trial's config (the selection file
    itself is an input of the job, so a changed selection re-runs it too)."""
    if not (tuning_of(profile) and is_tuned(profile, method)):
        return student_config(profile, dataset, teacher, student, method, seed).config_hash
    parts = [student_config(profile, dataset, teacher, student, method, seed, tuned={},
                            hparams_source="pending").config_hash]
    for k in range(len(candidates(profile, teacher, student, method))):
        for s in profile["tuning"]["seeds"]:
            parts.append(trial_config(profile, dataset, teacher, student, method, k, s).config_hash)
    return "tuned:" + hashlib.sha256(" ".join(parts).encode()).hexdigest()[:12]
