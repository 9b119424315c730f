"""The hyperparameter protocol (kdbench.tuning): search spaces, a deterministic candidate set
with the same number of trials per method, trials that never read the test split,
deterministic selection with its tie-breaking, and runs that take the selected values."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from kdbench.config import load_yaml
from kdbench.hparams import method_hparams, student_config
from kdbench.profile import validate_profile
from kdbench.errors import KDBenchError
from kdbench.tuning import (HELD_OUT, TuningError, candidate_values, candidates, hparams_source, read_trials, select,
                            selected_values, search_space, trial_config, trial_dir, trial_score, tuned_methods,
                            validation_only, write_selection)
from tests.tiny import tiny_profile

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (ROOT / "params" / "methods").glob("*.yaml"))


def tuning_profile(tmp: Path, trials=3, seeds=(100, 101), methods=("vanilla", "kd", "at", "e2kd"), **changes) -> dict:
    prof = tiny_profile(tmp, methods=list(methods), tuning={"trials": trials, "seeds": list(seeds)}, **changes)
    return validate_profile(prof)


# ----------------------------------------------------------------------------- search spaces
@pytest.mark.parametrize("method", METHODS)
def test_search_space_contains_paper_values(method):
    spec = load_yaml(ROOT / "params" / "methods" / f"{method}.yaml")
    space = search_space(method)
    if method == "vanilla":
        assert space == {} and not spec.get("defaults")
        return
    assert 1 <= len(space) <= 3, "a few named axes"
    for name, axis in space.items():
        assert name in spec["defaults"]
        if "choices" not in axis:
            for values in [spec["defaults"], *(spec.get("pairs") or {}).values()]:
                if name in values:
                    assert axis["low"] <= values[name] <= axis["high"], (name, values[name])


def test_e2kd_space_is_the_authors_grid():
    for method in ("e2kd", "e2kd_frozen"):
        assert search_space(method) == {"temperature": {"choices": [1.0, 5.0]},
                                        "explanation_weight": {"choices": [1.0, 5.0, 10.0]}}


@pytest.mark.parametrize("axis,pattern", [
    ({"low": 1.0}, "needs low and high"),
    ({"low": 5.0, "high": 8.0}, "must contain the paper value"),
    ({"low": 0.0, "high": 8.0, "log": True}, "log scale"),
    ({"choices": []}, "non-empty list"),
])
def test_bad_search_axis_is_named(tmp_path, axis, pattern):
    d = tmp_path / "methods"
    d.mkdir()
    (d / "kd.yaml").write_text(yaml.safe_dump({"defaults": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
                                               "search": {"temperature": axis}}))
    with pytest.raises(TuningError, match=pattern):
        search_space("kd", params_dir=d)


def test_search_axis_must_be_a_hyperparameter(tmp_path):
    d = tmp_path / "methods"
    d.mkdir()
    (d / "kd.yaml").write_text(yaml.safe_dump({"defaults": {"temperature": 4.0}, "search": {"temprature": {"low": 1, "high": 8}}}))
    with pytest.raises(KDBenchError, match="temprature.*did you mean 'temperature'"):
        search_space("kd", params_dir=d)


# ----------------------------------------------------------------------------- candidates
def test_candidates_are_deterministic_distinct_and_start_with_the_paper_values():
    space = {"kd_weight": {"low": 0.1, "high": 10.0, "log": True}, "temperature": {"low": 1.0, "high": 8.0}}
    base = {"kd_weight": 0.9, "temperature": 4.0, "ce_weight": 0.1}
    a = candidate_values(space, base, 8)
    assert a == candidate_values(space, copy.deepcopy(base), 8)
    assert a[0] == {"kd_weight": 0.9, "temperature": 4.0}
    # unscrambled Sobol' points 1, 2, 3: (0.5, 0.5), (0.75, 0.25), (0.25, 0.75), by hand
    assert a[1] == {"kd_weight": 1.0, "temperature": 4.5}
    assert a[2] == {"kd_weight": round(10 ** 0.5, 2), "temperature": 2.75}
    assert a[3] == {"kd_weight": round(10 ** -0.5, 3), "temperature": 6.25}
    assert len({json.dumps(c, sort_keys=True) for c in a}) == 8
    for c in a:
        assert 0.1 <= c["kd_weight"] <= 10 and 1 <= c["temperature"] <= 8


def test_a_sobol_point_equal_to_the_paper_values_is_skipped():
    # the log-scale midpoints of cid's axes are its paper values (10, 1)
    space = search_space("cid")
    cands = candidate_values(space, {"sample_weight": 10.0, "class_weight": 1.0}, 4)
    assert cands[0] == {"sample_weight": 10.0, "class_weight": 1.0} and cands[0] not in cands[1:]
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == 4


def test_grid_candidates_in_order_without_the_paper_point():
    space = search_space("e2kd")
    off_grid = candidate_values(space, {"temperature": 4.0, "explanation_weight": 1.0}, 7)
    assert off_grid[1:] == [{"temperature": t, "explanation_weight": w} for t in (1.0, 5.0) for w in (1.0, 5.0, 10.0)]
    on_grid = candidate_values(space, {"temperature": 1.0, "explanation_weight": 5.0}, 6)
    assert on_grid[0] == {"temperature": 1.0, "explanation_weight": 5.0} and on_grid[0] not in on_grid[1:]
    with pytest.raises(TuningError, match="use at most 6"):
        candidate_values(space, {"temperature": 1.0, "explanation_weight": 5.0}, 7)


def test_same_number_of_trials_for_every_method(tmp_path):
    prof = tuning_profile(tmp_path, trials=4, methods=METHODS)
    assert tuned_methods(prof) == [m for m in METHODS if m != "vanilla"]
    for method in tuned_methods(prof):
        cands = candidates(prof, "resnet14", "resnet8", method)
        assert len(cands) == 4, method
        assert cands[0] == {k: method_hparams(method, "resnet14", "resnet8")[k] for k in cands[0]}
    assert candidates(prof, "resnet14", "resnet8", "vanilla") == []


def test_trial_zero_is_the_pairs_own_paper_values(tmp_path):
    prof = tuning_profile(tmp_path, methods=["fcfd"], pairs=[{"teacher": "resnet56", "student": "resnet20"}])
    assert candidates(prof, "resnet56", "resnet20", "fcfd")[0] == {"feature_weight": 0.02, "temperature": 4.0}


def test_profile_tuning_errors(tmp_path):
    with pytest.raises(TuningError, match="use at most"):
        tuning_profile(tmp_path, trials=8)                  # e2kd's grid has 6 more points
    with pytest.raises(KDBenchError, match="tuning.trials"):
        validate_profile(tiny_profile(tmp_path, tuning={"trials": 0, "seeds": [1]}))
    with pytest.raises(TuningError, match="not both"):
        validate_profile(tiny_profile(tmp_path, tuning={"trials": 2, "seeds": [1]}, tuned="params/tuned/default.yaml"))


# ----------------------------------------------------------------------------- the test split
class TrapSplits(dict):
    """A dataset's splits whose test splits raise on any read."""

    def _check(self, name):
        if name in HELD_OUT:
            raise AssertionError(f"the {name} split was read")

    def __getitem__(self, name):
        self._check(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self._check(name)
        return super().get(name, default)

    def items(self):
        raise AssertionError("every split was read")

    def values(self):
        raise AssertionError("every split was read")


@pytest.fixture
def trap_dataset(monkeypatch):
    """shapes, with a test split that raises when touched, as every job loads it."""
    import dataclasses

    import kdbench.data.cache as cache
    from kdbench.data import build_dataset
    from kdbench.engine import trainer

    ds = build_dataset("shapes", image_size=16, n_train=128, n_val=32, n_test=32, n_test_ood=32, seed=0)
    trap = dataclasses.replace(ds, splits=TrapSplits(ds.splits))
    for module in (cache, trainer):  # the trainer's own binding is the one its jobs call
        monkeypatch.setattr(module, "load_dataset", lambda *a, **k: trap)
    return trap


def test_validation_only_holds_out_the_test_splits(trap_dataset):
    ds = validation_only(trap_dataset)
    assert set(ds.splits) == {"train", "val"}
    for name in HELD_OUT:
        with pytest.raises(KDBenchError, match="held out"):
            ds.splits[name]
        with pytest.raises(KDBenchError, match="held out"):
            ds.splits.get(name)
        assert not any(isinstance(v, dict) and name in v for v in ds.meta.values())
    assert ds.splits["val"] is trap_dataset.splits["val"]


def test_a_trial_never_reads_the_test_split(tmp_path, trap_dataset):
    from kdbench.engine.trainer import run

    # test_every_epoch on: a trial still never scores the test split
    prof = validate_profile(tiny_profile(tmp_path, student_train={"epochs": 2, "batch_size": 32,
                                                                  "test_every_epoch": True}))
    trial = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 100, tuned={},
                           hparams_source="trial 0/1", trial=0)
    metrics = run(trial, tmp_path / "trial", results_dir=tmp_path)
    assert metrics["kind"] == "trial" and 0 <= metrics["val_top1"] <= 1 and "top1" not in metrics
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["history.csv", "metrics.json"]
    # the same run as a benchmark run scores the test split: the trap fires (the test can fail)
    bench = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 100)
    with pytest.raises(AssertionError, match="test split was read"):
        run(bench, tmp_path / "bench", results_dir=tmp_path)


# ----------------------------------------------------------------------------- selection
def test_selection_picks_the_best_mean_validation_accuracy():
    trials = [{"trial": 0, "val_top1": [0.5, 0.7]}, {"trial": 1, "val_top1": [0.8, 0.5]},
              {"trial": 2, "val_top1": [0.6, 0.6]}, {"trial": 3, "val_top1": [0.9, None]}]
    assert select(trials)["trial"] == 1                       # 0.65 > 0.6; a diverged seed scores lowest
    assert select(list(reversed(trials)))["trial"] == 1       # order of the list does not matter


def test_selection_tie_goes_to_the_lowest_trial():
    trials = [{"trial": 2, "val_top1": [0.75, 0.5]}, {"trial": 1, "val_top1": [0.5, 0.75]},
              {"trial": 3, "val_top1": [0.25, 0.5]}]
    assert select(trials)["trial"] == 1
    assert select([{"trial": 4, "val_top1": [0.5]}, {"trial": 0, "val_top1": [0.5]}])["trial"] == 0
    # exactly rounded means: the same score whatever the seeds' order
    assert trial_score([0.1, 0.2, 0.3]) == trial_score([0.3, 0.1, 0.2]) == math.fsum([0.1, 0.2, 0.3]) / 3
    assert select([{"trial": 0, "val_top1": [None]}, {"trial": 1, "val_top1": [math.nan]}])["trial"] == 0


def _fake_trials(prof, method, scores):
    """metrics.json of every trial x seed, as tune-trial writes them."""
    from kdbench.io import write_json

    for k, per_seed in enumerate(scores):
        for seed, val in zip(prof["tuning"]["seeds"], per_seed):
            cfg = trial_config(prof, "shapes", "resnet14", "resnet8", method, k, seed)
            write_json({"kind": "trial", "config_hash": cfg.config_hash, "val_top1": val, "hparams": cfg.hparams},
                       trial_dir(prof["results_dir"], "shapes", "resnet14", "resnet8", method, k, seed) / "metrics.json")


def test_runs_use_the_selection_with_its_provenance(tmp_path):
    prof = tuning_profile(tmp_path, trials=3)
    with pytest.raises(TuningError, match="run the tuning trials and their selection first"):
        student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0)
    _fake_trials(prof, "kd", [[0.5, 0.5], [0.75, 0.625], [0.75, 0.5]])
    path = write_selection(prof, "shapes", "resnet14", "resnet8", "kd")
    rec = json.loads(path.read_text())
    cands = candidates(prof, "resnet14", "resnet8", "kd")
    assert rec["trial"] == 1 and rec["values"] == cands[1] and rec["n_trials"] == 3
    assert [t["val_top1"] for t in rec["trials"]] == [[0.5, 0.5], [0.75, 0.625], [0.75, 0.5]]
    assert write_selection(prof, "shapes", "resnet14", "resnet8", "kd").read_text() == path.read_text()

    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0)
    assert cfg.hparams == {"ce_weight": 0.1, **cands[1]} and cfg.hparams_source == "tuned (3 trials, val)"
    paper = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0, tuned={}, hparams_source="paper")
    assert cfg.config_hash != paper.config_hash
    van = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    assert van.hparams == {} and van.hparams_source == "paper"


def test_a_trial_of_another_config_is_not_selected(tmp_path):
    prof = tuning_profile(tmp_path, trials=2, seeds=[100])
    _fake_trials(prof, "kd", [[0.5], [0.6]])
    other = copy.deepcopy(prof)
    other["student_train"]["epochs"] = 9
    with pytest.raises(TuningError, match="another config"):
        read_trials(other, "shapes", "resnet14", "resnet8", "kd")


def test_a_profile_can_use_a_selection_file(tmp_path):
    sel = tmp_path / "tuned.yaml"
    sel.write_text(yaml.safe_dump({"protocol": {"trials": 6, "seeds": [100]}, "entries": [
        {"dataset": "shapes", "teacher": "resnet14", "student": "resnet8", "method": "kd", "trial": 0,
         "values": {"kd_weight": 0.9, "temperature": 4.0}},
        {"dataset": "shapes", "teacher": "resnet14", "student": "resnet8", "method": "at", "trial": 2,
         "values": {"at_weight": 50.0}}]}))
    prof = validate_profile(tiny_profile(tmp_path, methods=["vanilla", "kd", "at", "fitnet"], tuned=str(sel)))
    at = student_config(prof, "shapes", "resnet14", "resnet8", "at", 0)
    assert at.hparams["at_weight"] == 50.0 and at.hparams_source == hparams_source(6) == "tuned (6 trials, val)"
    kd = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0)
    paper_kd = student_config(validate_profile(tiny_profile(tmp_path, methods=["kd"])), "shapes", "resnet14",
                              "resnet8", "kd", 0)
    assert kd.hparams == paper_kd.hparams and paper_kd.hparams_source == "paper"
    assert kd.config_hash != paper_kd.config_hash              # the source is part of the hash
    assert selected_values(prof, "shapes", "resnet14", "resnet8", "fitnet") == (None, "paper")  # not listed
    with pytest.raises(TuningError, match="does not exist"):
        validate_profile(tiny_profile(tmp_path, tuned=str(tmp_path / "missing.yaml")))


def test_method_params_fix_an_axis(tmp_path):
    prof = tuning_profile(tmp_path, trials=3, methods=["kd"], method_params={"kd": {"temperature": 2.0}})
    cands = candidates(prof, "resnet14", "resnet8", "kd")
    assert all(set(c) == {"kd_weight"} for c in cands)
    assert trial_config(prof, "shapes", "resnet14", "resnet8", "kd", 2, 100).hparams["temperature"] == 2.0


# ----------------------------------------------------------------------------- the default profile
@pytest.mark.parametrize("name", ["default", "embedded"])
def test_tune_profile_is_its_profile_plus_tuning(name):
    default = load_yaml(ROOT / "params" / f"{name}.yaml")
    tune = load_yaml(ROOT / "params" / f"tune-{name}.yaml")
    for key in ("datasets", "pairs", "seeds", "teacher_seed", "teacher_train", "student_train",
                "method_params", "results_dir", "device", "threads", "teacher_threads"):
        assert tune.get(key) == default.get(key), key
    # the profile's methods first, in its order (the embedded profile's tuning adds the
    # classic baselines embedded-all runs tuned)
    assert tune["methods"][:2] == default["methods"][:2] and set(default["methods"]) <= set(tune["methods"])
    assert ({"fitnet", "at", "dkd"} <= set(tune["methods"])) == (name == "embedded")
    assert default["tuned"] == f"params/tuned/{name}.yaml" and "tuning" not in default
    assert tune.get("tuned") is None and set(tune["tuning"]["seeds"]).isdisjoint(default["seeds"])
    validate_profile(copy.deepcopy(default), f"params/{name}.yaml")
    validate_profile(copy.deepcopy(tune), f"params/tune-{name}.yaml")


TUNED_FILE = """# a hand-written selection file (as tune-export writes one, plus a comment)
protocol:
  profile: params/tune-x.yaml
  trials: 4
  seeds: [100]
entries:
- dataset: shapes
  teacher: resnet32
  student: resnet8
  method: kd
  trial: 2
  values: {kd_weight: 0.5, temperature: 2.0}
  score: 0.5
  trials: []
- dataset: shapes
  teacher: resnet32
  student: resnet8
  method: dkd   # its comment stays
  trial: 0
  values: {beta: 8.0}
  score: 0.6
  trials:
  - {trial: 0, score: 0.6}
- dataset: digits
  teacher: resnet32
  student: resnet8
  method: kd
  trial: 1
  values: {kd_weight: 0.9}
  score: 0.7
  trials: []
"""


def test_merge_puts_in_one_methods_selections_and_leaves_the_others_byte_identical():
    """`kdbench tune-method`'s merge: the tuned method's entry is replaced where it stands,
    a new cell's appended; header, protocol and every other entry keep their bytes."""
    from kdbench.tuning import merge_entries

    kd_digits = TUNED_FILE[TUNED_FILE.index("- dataset: digits"):]
    dkd_shapes = TUNED_FILE[TUNED_FILE.index("- dataset: shapes\n  teacher: resnet32\n  student: resnet8\n  method: dkd"):
                            TUNED_FILE.index("- dataset: digits")]
    new_kd = {"dataset": "shapes", "teacher": "resnet32", "student": "resnet8", "method": "kd", "trial": 3,
              "values": {"kd_weight": 0.1, "temperature": 8.0}, "score": 0.8, "trials": [{"trial": 3, "score": 0.8}]}
    new_cell = {**new_kd, "dataset": "fashion_mnist"}
    merged = merge_entries(TUNED_FILE, [new_kd, new_cell])
    head = TUNED_FILE[:TUNED_FILE.index("- dataset: shapes")]
    assert merged.startswith(head) and dkd_shapes in merged and kd_digits in merged
    doc = yaml.safe_load(merged)
    old = yaml.safe_load(TUNED_FILE)
    assert doc["protocol"] == old["protocol"]
    assert doc["entries"] == [new_kd, old["entries"][1], old["entries"][2], new_cell]
    assert merged.index(dkd_shapes) < merged.index(kd_digits) < merged.index("dataset: fashion_mnist")
    assert merge_entries(merged, [new_kd, new_cell]) == merged  # merging again changes nothing
    with pytest.raises(TuningError, match="no top-level `entries:` list"):
        merge_entries("protocol: {trials: 4}\n", [new_kd])


def test_tune_method_dry_run_plans_only_that_methods_trials(tmp_path, capfd):
    """`kdbench tune-method --dry-run` on the default board: the workflow's plan holds the
    data, the teacher, kd's 4 trials and its selection, nothing of the other methods, no
    benchmark run; the tuned file is not touched. A method with nothing to tune is refused
    before any job."""
    from kdbench.cli import main

    tuned = ROOT / "params" / "tuned" / "default.yaml"
    before = tuned.read_bytes()
    results = tmp_path / "results"
    args = ["tune-method", "--params", str(ROOT / "params" / "default.yaml"), "--set", f"results_dir={results}"]
    assert main(args + ["--method", "vanilla", "--dry-run"]) == 2
    assert "'vanilla' has nothing to tune" in capfd.readouterr().err
    assert main(args + ["--method", "kd", "--dry-run", "--cores", "1"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    jobs = dict(line.split() for line in text.split("Job stats:")[1].split("total")[0].splitlines()[3:] if line.strip())
    assert jobs == {"data": "1", "teacher": "1", "tune_trial": "4", "tune_select": "1"}
    assert "--method kd" in text and not any(f"--method {m} " in text for m in ("dkd", "e2kd", "vanilla", "tdd"))
    assert f"would merge 1 selection(s) of 'kd' into {tuned}" in out.err
    assert tuned.read_bytes() == before


def test_a_selection_tuned_for_another_recipe_says_so():
    """A ``tuned:`` file records the recipe and dataset options it was selected on
    (protocol); a profile that trains with others still gets the values, but its rows say
    so (hparams_source), never silently: found when a frontier point reused the default's
    selection with more student data."""
    from kdbench.config import project_root
    from kdbench.hparams import selected_values
    from kdbench.profile import load_profile_with_overrides

    def source(*overrides):
        prof = load_profile_with_overrides(project_root() / "params" / "default.yaml", list(overrides))
        return selected_values(prof, "fashion_mnist", "resnet32", "resnet8", "kd")

    values, src = source()
    assert src == "tuned (4 trials, val)" and values == {"kd_weight": 0.9, "temperature": 4.0}
    values, src = source("student_train.student_shots=1000", "student_train.epochs=10")
    assert values == {"kd_weight": 0.9, "temperature": 4.0}
    assert src == ("tuned (4 trials, val; selected for another recipe: student_train.epochs, "
                   "student_train.student_shots)")
    assert source("datasets.fashion_mnist.context_bias=false")[1].endswith(
        "selected for another recipe: datasets.context_bias)")
    assert source("student_train.test_every_epoch=false")[1] == "tuned (4 trials, val)"   # hash-neutral default
