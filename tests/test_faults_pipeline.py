"""Faults of a whole pipeline run (issue 13): SIGKILL of the run's process group, then the
README's command again; a truncated prepared data file. Each in a temporary copy of the
repository (tests/test_pipeline.py's helpers), on a reduced smoke profile."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time

import pytest

from tests.test_pipeline import SNAKEMAKE, copy_repo, env_for, snakemake, write_params

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


def test_truncated_data_is_rebuilt_and_no_result_is_lost(reference, tmp_path):
    repo, params = reference          # the last test of this file: it may change the reference run
    env = env_for(repo.parent)
    data = repo / "results" / "data" / "shapes" / "data.pt"
    finished = sorted(p for p in (repo / "results").rglob("*") if p.name in ("model.pt", "metrics.json"))
    before = {p: p.read_bytes() for p in finished}
    os.truncate(data, 10000)

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
    assert "data.pt has 10000 bytes" in out and "rule data" in out
    assert "rule teacher" not in out and "rule distill" not in out      # nothing finished re-runs
    assert {p: p.read_bytes() for p in finished} == before                # nor is deleted
    meta = json.loads((data.parent / "meta.json").read_text())
    assert data.stat().st_size == meta["data_bytes"] > 10000
