"""The workflow checked without training (the dry-run half of tests/test_pipeline.py, in a
file of its own so that pytest's workers run it beside the end-to-end runs): bad params
fail before any job with one clear error and write nothing; every shipped profile dry-runs
to the expected jobs and lints clean; the SLURM and Kubernetes profiles plan their DDP jobs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.test_pipeline import ROOT, copy_repo, snakemake, job_counts, write_params, profile_counts


# ----------------------------------------------------------------------------- bad params
@pytest.fixture(scope="module")
def bad_repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("bad") / "repo")


BAD = {
    "unknown_method": ({"methods": ["vanilla", "kdd"]}, ["unknown method 'kdd'", "did you mean 'kd'", "valid choices"]),
    "misspelt_key": ({"seed": [0, 1], "seeds": None}, ["'seed'", "did you mean 'seeds'", "valid choices"]),
    "wrong_type": ({"student_train": {"epochs": "two", "batch_size": 64}}, ["student_train.epochs", "'two'", "integer"]),
    "unknown_arch": ({"pairs": [{"teacher": "resnet14", "student": "resnet9"}]},
                     ["unknown arch 'resnet9'", "valid choices", "resnet8"]),
    "unknown_dataset": ({"datasets": {"shapez": {"image_size": 16}}},
                        ["unknown dataset 'shapez'", "did you mean 'shapes'", "valid choices"]),
}


#: the cases run through Snakemake (the Snakefile's wiring of kdbench's validation); every
#: case's message is checked through the same validation in-process below (seconds, not a
#: Snakemake start each)
THROUGH_SNAKEMAKE = ["unknown_method", "misspelt_key"]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_params_give_one_clear_error(bad_repo, case):
    from kdbench.errors import KDBenchError
    from kdbench.profile import load_profile_with_overrides

    changes, expected = BAD[case]
    params = write_params(bad_repo, f"bad_{case}.yaml", **changes)
    with pytest.raises(KDBenchError) as err:
        load_profile_with_overrides(bad_repo / params)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert not (bad_repo / "results").exists()


@pytest.mark.parametrize("case", THROUGH_SNAKEMAKE)
def test_bad_params_fail_before_any_job(bad_repo, case):
    changes, expected = BAD[case]
    params = write_params(bad_repo, f"bad_{case}.yaml", **changes)
    proc = snakemake(bad_repo, "--configfile", params)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in expected:
        assert text in out, (text, out[-2000:])
    assert out.count("invalid params") == 1, out[-2000:]           # one error, not a cascade
    assert "Traceback" not in out
    assert params in out                                            # names the file
    assert not (bad_repo / "results").exists()                      # nothing written
    assert "Job stats" not in out


def test_two_configfiles_refused(bad_repo):
    proc = snakemake(bad_repo, "-n", "--configfile", "params/smoke.yaml", "params/default.yaml")
    assert proc.returncode != 0 and "give one params profile" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- dry runs
@pytest.mark.parametrize("profile", ["default", "default-long", "embedded", "embedded-all", "tune-default", "cifar100",
                                     "cifar10", "imagenet", "waterbirds"])
def test_profile_dry_run(bad_repo, profile):
    proc = snakemake(bad_repo, "-n", "--configfile", f"params/{profile}.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert job_counts(proc.stdout + proc.stderr) == profile_counts(bad_repo / "params" / f"{profile}.yaml")
    assert not (bad_repo / "results").exists()


@pytest.mark.parametrize("profile,counts", [
    # the default's: 1 dataset x 1 pair x 5 tuned methods x 4 trials x 1 seed = 20 trials, 5 selections
    ("tune-default", {"data": 1, "teacher": 1, "tune_trial": 20, "tune_select": 5}),
    # the embedded profile's: 2 datasets x 2 pairs x 8 tuned methods x 4 trials = 128 trials, 32 selections
    ("tune-embedded", {"data": 2, "teacher": 4, "tune_trial": 128, "tune_select": 32})])
def test_tune_dry_run_counts(bad_repo, profile, counts):
    """`tune` runs only the trials and selections (and what they need)."""
    proc = snakemake(bad_repo, "-n", "tune", "--configfile", f"params/{profile}.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert job_counts(proc.stdout + proc.stderr) == {**counts, "tune_export": 1, "tune": 1}


@pytest.mark.parametrize("profile", ["default", "tune-default"])
def test_lint_is_clean(bad_repo, profile):
    proc = snakemake(bad_repo, "--lint", "--configfile", f"params/{profile}.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out and "good condition" in out, out[-3000:]


def test_cifar100_recipe(bad_repo):
    """The paper recipe reaches the jobs (validated, defaults filled in)."""
    from kdbench.hparams import student_config
    from kdbench.profile import load_profile

    os.chdir(bad_repo)
    try:
        prof = load_profile(bad_repo / "params" / "cifar100.yaml")
    finally:
        os.chdir(ROOT)
    pairs = {(p["teacher"], p["student"]) for p in prof["pairs"]}
    assert len(pairs) == 10 and ("resnet32x4", "shufflenetv2") in pairs and ("resnet50", "mobilenetv2") in pairs
    r = prof["student_train"]
    assert (r["epochs"], r["lr"], r["batch_size"], r["milestones"], r["gamma"], r["weight_decay"]) == \
        (240, 0.05, 64, [150, 180, 210], 0.1, 5e-4)
    cfg = student_config(prof, "cifar100", "vgg13", "mobilenetv2", "kd", 0)
    assert cfg.lr == 0.01
    assert student_config(prof, "cifar100", "resnet56", "resnet20", "kd", 0).lr == 0.05


def test_slurm_profile_dry_run(bad_repo):
    import snakemake_executor_plugin_slurm  # noqa: F401  (pinned: a broken install fails, not skips)
    proc = snakemake(bad_repo, "-n", "--workflow-profile", "workflow/profiles/slurm",
                     "--configfile", "params/cifar100.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "workflow/profiles/slurm" in out
    distill = out[out.index("rule distill:"):]
    resources = re.search(r"resources: (.*)", distill).group(1)
    assert "gpu=1" in resources and "slurm_partition=" in resources and "runtime=" in resources
    assert job_counts(out)["distill"] == profile_counts(bad_repo / "params" / "cifar100.yaml")["distill"]


def _training_jobs(out: str):
    """(resources line, shell command) of every teacher/distill job of a dry-run -p."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule )", out):
        if block.startswith(("rule teacher:", "rule distill:")):
            jobs.append((re.search(r"resources: (.*)", block).group(1),
                         re.search(r"Shell command: (.*)", block).group(1) if "Shell command:" in block else
                         block.strip().splitlines()[-1]))
    return jobs


def _assert_ddp_jobs(out: str, n: int, repo: Path):
    jobs = _training_jobs(out)
    counts = profile_counts(repo / "params" / "cifar100.yaml")
    assert len(jobs) == counts["teacher"] + counts["distill"], len(jobs)  # every teacher and student
    for resources, cmd in jobs:
        assert f"nproc={n}" in resources and f"gpu={n}" in resources, resources
        assert f"torchrun --standalone --nproc-per-node {n} -m kdbench.cli " in cmd, cmd


def test_slurm_profile_dry_run_ddp(bad_repo):
    """Multi-GPU jobs: nproc_per_node=2 -> every training job asks for 2 GPUs and one task
    (the torchrun launcher), and runs under torchrun."""
    import snakemake_executor_plugin_slurm  # noqa: F401  (pinned: a broken install fails, not skips)
    proc = snakemake(bad_repo, "-n", "-p", "--workflow-profile", "workflow/profiles/slurm",
                     "--configfile", "params/cifar100.yaml", "--config", "nproc_per_node=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    _assert_ddp_jobs(out, 2, bad_repo)
    for resources, _ in _training_jobs(out):
        assert "tasks=1" in resources and "tasks_per_gpu=0" in resources, resources
    assert job_counts(out) == profile_counts(bad_repo / "params" / "cifar100.yaml")


def test_kubernetes_profile_dry_run_ddp(bad_repo, tmp_path):
    """The Kubernetes profile (GPU requests per job, fs storage on a shared volume), with
    DDP resources; the storage prefix is moved to a temporary folder for the test."""
    import snakemake_executor_plugin_kubernetes  # noqa: F401  (pinned: a broken install fails, not skips)
    import snakemake_storage_plugin_fs  # noqa: F401
    proc = snakemake(bad_repo, "-n", "-p", "--workflow-profile", "workflow/profiles/kubernetes",
                     "--configfile", "params/cifar100.yaml", "--config", "nproc_per_node=2",
                     "--default-storage-prefix", str(tmp_path / "store"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "workflow/profiles/kubernetes" in out
    _assert_ddp_jobs(out, 2, bad_repo)
    for resources, _ in _training_jobs(out):
        assert "gpu_manufacturer=nvidia" in resources, resources
    evaluate = out[out.index("rule evaluate:"):]
    assert "gpu=1" in re.search(r"resources: (.*)", evaluate).group(1)
    assert job_counts(out) == profile_counts(bad_repo / "params" / "cifar100.yaml")
