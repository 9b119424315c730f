"""The SLURM profile on a real scheduler: a single-node cluster on this machine
(`scripts/local_slurm.sh`, started by `.ci/run`), a small profile submitted through
`workflow/profiles/slurm` with the partition, and the sizes a job asks for, set to that
node's. One SLURM run, against a local `--cores 2` run of the same profile:

- every job but the local rules ran as a SLURM job (its job id, its state in `squeue`);
- the teacher's training job is cancelled with `scancel` after its first epoch's checkpoint:
  Snakemake retries it (the profile's `retries`), it resumes from that checkpoint (its log
  says so) and the jobs after it take its output;
- the board's runs.csv equals the local run's bit for bit (every column but the timings),
  the teacher's columns (the cancelled job's numbers) included.

Skips with a one-line reason where the machine cannot run the cluster; with
KDBENCH_REQUIRE_SLURM=1 (CI) a skip is a failure instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import ROOT, SNAKEMAKE, copy_repo, env_for

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "local_slurm.sh"
PARTITION = re.search(r"^PARTITION=(\S+)$", SCRIPT.read_text(), re.M).group(1)
UP = ("idle", "mixed", "allocated", "completing")
#: the tiny profile (from smoke.yaml): one pair, one seed, the vanilla student (a distill
#: job), on the CPU: four SLURM jobs deep (data, teacher | distill, evaluate), the fewest
#: with a training job whose output another job takes (the teacher, cancelled in training)
PROFILE = {"methods": ["vanilla"], "seeds": [0], "method_params": {}, "device": "cpu",
           "datasets": {"shapes": {"image_size": 16, "n_train": 320, "n_val": 64, "n_test": 64, "n_test_ood": 64,
                                   "seed": 0}},
           "teacher_train": {"epochs": 5, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
           "student_train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "schedule": "cosine"},
           "evaluation": {"n_samples": 32, "probe_train_samples": 64, "figures": False},
           "tracking": {"enabled": False}}
#: the job cancelled after its first epoch: its SLURM comment (the plugin's), run and log
CANCELLED = {"comment": "rule_teacher_wildcards_shapes_resnet14_0", "run": "teachers/shapes/resnet14/s0",
             "log": "logs/teachers/shapes/resnet14/s0.log", "epochs": PROFILE["teacher_train"]["epochs"]}
#: timing columns of runs.csv: wall clocks, never equal between two runs
TIMINGS = re.compile(r"(_s|_img_s)$")


def slurm_unavailable() -> str | None:
    """Why this machine cannot run the test (None: the local cluster is up)."""
    if shutil.which("sinfo"):
        state = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True)
        if state.returncode == 0 and (state.stdout.split() or [""])[0] in UP:
            return None
    if os.geteuid() != 0:
        return "no local SLURM cluster, and starting one needs root (scripts/local_slurm.sh)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return f"the local SLURM cluster is not up (partition {PARTITION!r}): run scripts/local_slurm.sh"


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("KDBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"KDBENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def local_profile(tmp: Path) -> Path:
    """workflow/profiles/slurm with the partition and the sizes of the local node: every
    slurm_partition is the local one, a job asks for its threads (one CPU) and 1 GB, no GPU;
    squeue polls the status (no accounting database), soon after a submission."""
    prof = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    for resources in [prof["default-resources"], *prof["set-resources"].values()]:
        resources.update(slurm_partition=PARTITION, cpus_per_task=1, mem_mb=1000)
        resources.pop("gpu", None)
    prof.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1})
    out = tmp / "slurm-local"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return out


def write_profile(repo: Path) -> str:
    prof = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    prof.update(PROFILE)
    (repo / "params" / "slurm-test.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return "params/slurm-test.yaml"


def slurm_jobs(run_out: str) -> dict:
    """SLURM job id -> (state, comment) of the jobs this Snakemake run submitted."""
    ids = set(re.findall(r"SLURM jobid (\d+)", run_out))
    q = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True, check=True)
    rows = (line.split("|", 2) for line in q.stdout.splitlines())
    return {i: (state, comment) for i, state, comment in rows if i in ids}


def cancel_after_first_checkpoint(checkpoint: Path, comment: str, stop: threading.Event, record: dict):
    """scancel the running SLURM job with this comment once its checkpoint.pt exists."""
    while not stop.is_set():
        if checkpoint.is_file():
            q = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True)
            for line in q.stdout.splitlines():
                job, job_comment = line.split("|", 1)
                if job_comment == comment:
                    subprocess.run(["scancel", job], check=True)
                    record.update(job=job, at=time.time())
                    return
        time.sleep(0.05)


def read_runs(repo: Path):
    import pandas as pd

    runs = pd.read_csv(repo / "results" / "leaderboard" / "runs.csv", dtype=str, keep_default_na=False)
    return runs[[c for c in runs.columns if not TIMINGS.search(c)]]


def test_slurm_run_equals_local_run(cluster, tmp_path):
    local = copy_repo(tmp_path / "local")
    params = write_profile(local)
    repo = copy_repo(tmp_path / "slurm")
    write_profile(repo)
    profile = local_profile(tmp_path)
    stop, cancelled = threading.Event(), {}
    watcher = threading.Thread(target=cancel_after_first_checkpoint, daemon=True,
                               args=(repo / "results" / CANCELLED["run"] / "checkpoint.pt", CANCELLED["comment"], stop,
                                     cancelled))
    # the local run beside the SLURM one (which mostly waits for its status polls)
    local_run = subprocess.Popen([SNAKEMAKE, "--cores", "2", "--configfile", params], cwd=local,
                                 env=env_for(tmp_path / "local"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    watcher.start()
    t0 = time.time()
    try:
        proc = subprocess.run([SNAKEMAKE, "--workflow-profile", str(profile), "--configfile", params], cwd=repo,
                              env=env_for(tmp_path / "slurm"), capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        watcher.join()
        local_out = local_run.communicate(timeout=600)[0]
    print(f"\nSLURM run {time.time() - t0:.1f} s wall (a local --cores 2 run beside it)", file=sys.stderr)
    assert local_run.returncode == 0, local_out[-4000:]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    # every job but the local rules (all, leaderboard) was a SLURM job, and SLURM ran it
    jobs = slurm_jobs(out)
    rules = [re.match(r"rule_([a-z_]+?)(_wildcards|$)", comment).group(1) for _, comment in jobs.values()]
    assert sorted(rules) == ["data", "distill", "evaluate", "teacher", "teacher"], jobs
    assert cancelled, "the teacher job was never seen running after its first checkpoint"
    assert jobs[cancelled["job"]][0] == "CANCELLED", jobs
    assert [state for state, _ in jobs.values()].count("COMPLETED") == len(jobs) - 1, jobs

    # the retry resumed from the cancelled attempt's checkpoint
    log = (repo / "results" / CANCELLED["log"]).read_text()
    resumed = re.search(r"resuming after epoch (\d+)", log)
    assert resumed and 1 <= int(resumed.group(1)) < CANCELLED["epochs"], log[-2000:]
    # the cancelled attempt's own log is gone (Snakemake deletes a job's declared log before
    # it runs it again); SLURM's log of that attempt is kept by the executor plugin
    slurm_log, = (repo / ".snakemake" / "slurm_logs").glob(f"rule_teacher/*/{cancelled['job']}.log")
    assert "CANCELLED" in slurm_log.read_text()

    # the same numbers as the local run, bit for bit (the teacher's are on every row too)
    slurm_runs, local_runs = read_runs(repo), read_runs(local)
    assert len(local_runs) == len(PROFILE["methods"])
    assert slurm_runs.to_dict("records") == local_runs.to_dict("records")
