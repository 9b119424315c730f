"""Faults of a whole pipeline run (issue 13): SIGKILL of the run's process group, then the
README's command again; a truncated prepared data file. Each in a temporary copy of the
repository (tests/test_pipeline.py's helpers), on a reduced smoke profile."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest

from tests.test_pipeline import SNAKEMAKE, copy_repo, env_for, job_counts, snakemake, write_params

pytestmark = pytest.mark.slow

# two students (vanilla, kd) of one teacher: every rule runs, in well under a minute
SMALL = dict(methods=["vanilla", "kd"], seeds=[0], tracking={"enabled": False},
             evaluation={"n_samples": 32, "probe_train_samples": 64, "figures": False, "figure_images": 4},
             student_train={"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "cosine"})
TIME_COLUMNS = ("train_s", "wall_s", "eval_s", "train_img_s", "train_s_mean")


def _board(repo):
    import pandas as pd

    runs = pd.read_csv(repo / "results" / "leaderboard" / "runs.csv")
    keep = [c for c in runs.columns if c not in TIME_COLUMNS and not c.endswith("_s")]
    return runs[keep].sort_values(["method", "seed"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The small profile, run once without interruption."""
    repo = copy_repo(tmp_path_factory.mktemp("ref") / "repo")
    params = write_params(repo, "small.yaml", **SMALL)
    proc = snakemake(repo, "--configfile", params)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return repo, params


def test_sigkill_of_whole_run_then_same_command_finishes(reference, tmp_path):
    import pandas as pd

    ref_repo, params = reference
    repo = copy_repo(tmp_path / "repo")
    write_params(repo, "small.yaml", **SMALL)
    env = env_for(tmp_path)
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "2", "--configfile", params], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    students = repo / "results" / "students"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(students.rglob("checkpoint.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)   # the whole run: snakemake and its jobs, no cleanup
    proc.wait(timeout=60)
    assert list((repo / ".snakemake" / "locks").glob("*.lock")), "SIGKILL should leave Snakemake's locks"

    again = snakemake(repo, "--configfile", params, env=env)     # the README's command, as written
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "stale Snakemake lock" in out
    pd.testing.assert_frame_equal(_board(repo), _board(ref_repo))

    # a run that is really alive (it holds the run flock and its locks) is still respected
    (repo / ".snakemake" / "locks").mkdir(exist_ok=True)
    (repo / ".snakemake" / "locks" / "0.output.lock").write_text("results/leaderboard/runs.csv\n")
    with open(repo / ".snakemake" / "kdbench-run.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = snakemake(repo, "--configfile", params, "--forcerun", "leaderboard", env=env)
    assert busy.returncode != 0 and "cannot be locked" in busy.stdout + busy.stderr
    assert (repo / ".snakemake" / "locks" / "0.output.lock").exists()


def test_orphaned_job_keeps_the_locks_and_is_not_started_twice(reference, tmp_path):
    """Issue 21, item 6: only the main Snakemake process is killed; its distill job (a real
    child that outlives it) keeps training. The next run used to remove the locks and start
    the same job into the same directory; now it names the live job and refuses."""
    import shutil

    from kdbench.io import job_lock_holder

    ref_repo, params = reference
    repo = tmp_path / "repo"
    shutil.copytree(ref_repo, repo, symlinks=True)     # the finished run, Snakemake's records included
    env = env_for(tmp_path)
    # the same profile with long student runs: its distill jobs re-run, and train for minutes
    longer = ["--configfile", write_params(repo, "long.yaml", **{
        **SMALL, "student_train": {**SMALL["student_train"], "epochs": 3000}})]
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([SNAKEMAKE, "--cores", "2", *longer], cwd=repo, env=env, stdout=fh, stderr=fh,
                                start_new_session=True)
    try:
        students = repo / "results" / "students"
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not list(students.rglob("checkpoint.pt")):
            time.sleep(0.05)
        assert list(students.rglob("checkpoint.pt")), log.read_text()[-3000:]
        job_dir = next(students.rglob("checkpoint.pt")).parent
        os.kill(proc.pid, signal.SIGKILL)                 # the main process only: its jobs live on
        proc.wait(timeout=60)
        orphan = job_lock_holder(job_dir)
        assert orphan is not None, "the distill job died with its parent"

        again = snakemake(repo, *longer, env=env)
        out = again.stdout + again.stderr
        assert again.returncode != 0 and "removing" not in out, out[-3000:]
        named = re.search(r"a job of an earlier run of this directory is still running \(pid (\d+), writing (\S+);", out)
        assert named and job_lock_holder(repo / named.group(2)) == named.group(1), out[-3000:]
        assert "cannot be locked" in out
        assert job_lock_holder(job_dir) == orphan and list((repo / ".snakemake" / "locks").glob("*.lock"))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)           # the orphans share the run's process group
        except ProcessLookupError:
            pass


def test_truncated_data_and_results_are_redone_and_no_result_is_lost(reference, tmp_path):
    """A truncated prepared data.pt (issue 13), a truncated student model.pt and a truncated
    evaluation record (issue 21, items 1-3; before: a board without that seed at rc 0, or
    evaluate crashing on every rerun). The pipeline finds all three before the DAG is built
    and re-runs exactly their jobs; nothing else finished re-runs or is lost, and the board
    is bit-identical to the first one."""
    repo, params = reference          # the last test of this file: it may change the reference run
    env = env_for(repo.parent)
    board = _board(repo)
    results = repo / "results"
    data = results / "data" / "shapes" / "data.pt"
    model = results / "students/shapes/resnet14__resnet8/kd/s0/model.pt"
    record = results / "evals/shapes/resnet14__resnet8/vanilla/s0.json"
    finished = sorted(p for p in results.rglob("*") if p.name in ("model.pt", "metrics.json") and p.parent != model.parent)
    before = {p: p.read_bytes() for p in finished}
    os.truncate(data, 10000)
    os.truncate(model, 5000)
    os.truncate(record, record.stat().st_size // 2)

    # a job run by hand names the file and the complete command that rebuilds it
    kd = subprocess.run([str(SNAKEMAKE).replace("snakemake", "kdbench"), "distill", "--params", params,
                         "--dataset", "shapes", "--teacher", "resnet14", "--student", "resnet8", "--method", "kd",
                         "--seed", "0", "--force", "--out", str(tmp_path / "by_hand")],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert kd.returncode == 2 and len(kd.stderr.strip().splitlines()) == 1, kd.stderr
    assert "results/data/shapes/data.pt is unreadable" in kd.stderr
    assert f"kdbench prepare-data --params {params} --dataset shapes" in kd.stderr

    again = snakemake(repo, "--configfile", params, env=env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "data.pt has 10000 bytes" in out
    assert f"{model.relative_to(repo)} has 5000 bytes" in out and f"{record.relative_to(repo)} has" in out
    assert job_counts(out) == {"data": 1, "distill": 1, "evaluate": 1, "leaderboard": 1, "all": 1}
    assert {p: p.read_bytes() for p in finished} == before                # nothing else re-ran or is lost
    pd.testing.assert_frame_equal(_board(repo), board)
    meta = json.loads((data.parent / "meta.json").read_text())
    assert data.stat().st_size == meta["data_bytes"] > 10000
