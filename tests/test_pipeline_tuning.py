"""The tuning protocol inside the workflow, end to end (a subprocess `snakemake` in a
temporary copy of the repository, as tests/test_pipeline.py runs it): trials -> selection ->
the benchmark run uses the selected values; a profile pointing at the exported selection
gives the same runs. In a file of its own so that pytest's workers run it beside the smoke
pipeline (tests/test_pipeline.py)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.test_pipeline import ROOT, copy_repo, job_counts, profile_counts, snakemake, write_params

pytestmark = pytest.mark.slow


def test_tuning_profile_end_to_end(tmp_path):
    """A profile with tuning: trials -> selection -> the benchmark runs use the selected
    values; a second run has nothing to do; a profile pointing at the exported selection
    file gives the same run configs (hashes) as the trials' own selection."""
    from kdbench.hparams import student_config
    from kdbench.profile import validate_profile
    from kdbench.tuning import candidates

    repo = copy_repo(tmp_path / "repo")
    params = write_params(repo, "smoke_tune.yaml", methods=["vanilla", "kd"], seeds=[0],
                          tuning={"trials": 2, "seeds": [100]})
    dry = snakemake(repo, "-n", "--configfile", params)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    assert job_counts(dry.stdout + dry.stderr) == profile_counts(repo / params)

    students = repo / "results" / "students" / "shapes" / "resnet14__resnet8"
    targets = ["results/students/shapes/resnet14__resnet8/kd/s0/metrics.json"]
    proc = snakemake(repo, *targets, "results/tuning/tuned.yaml", "--configfile", params)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert job_counts(out) == {"data": 1, "teacher": 1, "tune_trial": 2, "tune_select": 1, "tune_export": 1,
                               "distill": 1}
    prof = yaml.safe_load((repo / params).read_text())
    for method in ("kd",):
        sel = json.loads((repo / "results" / "tuning" / "shapes" / "resnet14__resnet8" / method / "selection.json")
                         .read_text())
        assert [t["trial"] for t in sel["trials"]] == [0, 1] and all(len(t["val_top1"]) == 1 for t in sel["trials"])
        run = json.loads((students / method / "s0" / "metrics.json").read_text())
        assert run["hparams_source"] == "tuned (2 trials, val)"
        assert {k: run["hparams"][k] for k in sel["values"]} == sel["values"]
        # the trials saw no test split: they scored validation only, and wrote no model
        for trial in (repo / "results" / "tuning" / "shapes" / "resnet14__resnet8" / method).glob("t*/s100"):
            rec = json.loads((trial / "metrics.json").read_text())
            assert rec["kind"] == "trial" and "top1" not in rec and not (trial / "model.pt").exists()
    again = snakemake(repo, "-n", *targets, "results/tuning/tuned.yaml", "--configfile", params)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    # the exported selection, used as a profile's tuned: file, gives the same runs
    exported = yaml.safe_load((repo / "results" / "tuning" / "tuned.yaml").read_text())
    assert exported["protocol"]["trials"] == 2 and len(exported["entries"]) == 1
    os.chdir(repo)
    try:
        frozen = dict(prof, tuned="results/tuning/tuned.yaml")
        frozen.pop("tuning")
        frozen = validate_profile(frozen)
        for method in ("kd",):
            run = json.loads((students / method / "s0" / "metrics.json").read_text())
            assert student_config(frozen, "shapes", "resnet14", "resnet8", method, 0).config_hash == run["config_hash"]
            assert len(candidates(validate_profile(dict(prof)), "resnet14", "resnet8", method)) == 2
    finally:
        os.chdir(ROOT)
