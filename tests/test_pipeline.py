"""The Snakemake pipeline end to end, run as a user runs it: `snakemake` in a subprocess in
a temporary copy of the repository (Snakefile, workflow/, params/; the kdbench package is
the one installed in the venv), with the MLflow store in the temporary directory.

- (bad params and the dry runs: tests/test_workflow_dry_runs.py);
- the smoke profile runs end to end (one run shared by the tests below) and its board has
  every column and all ten methods;
- a method from another package (an entry point on PYTHONPATH, nothing installed) added to
  a copy of the smoke profile: an interrupted run re-runs and completes, and only the new
  method's jobs (and the board) run;
- DVC in a fresh git repository: `dvc repro`, `dvc metrics show`, `dvc metrics diff`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
#: every method: the smoke profile runs all of them (2 seeds)
SMOKE_METHODS = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())["methods"]
DESIGN_COLUMNS = ["dataset", "teacher", "student", "method", "n_seeds", "top1_mean", "top1_std", "top1_sel_mean",
                  "top1_ood_mean", "agreement_mean", "expl_sim_mean", "epg_mean", "fss_mean", "rs_mean",
                  "ece_mean", "nll_mean", "delta_vs_kd", "delta_vs_kd_ci_lo", "delta_vs_kd_ci_hi",
                  "delta_vs_kd_p_holm", "delta_vs_vanilla", "delta_vs_vanilla_ci_lo", "delta_vs_vanilla_ci_hi",
                  "delta_vs_vanilla_p_holm", "hparams", "hparams_source", "params", "train_s_mean"]
BOARD_FILES = ["runs.csv", "leaderboard.csv", "leaderboard.md", "leaderboard.tex", "leaderboard.html",
               "metrics.json", "claims.csv", "claims.md", "accuracy.png", "accuracy_vs_agreement.png", "ood_vs_id.png",
               "overall.csv", "performance_profile.csv", "performance_profile.png", "leaderboard_paper.tex"]


# ----------------------------------------------------------------------------- helpers
def copy_repo(dst: Path, extra=()) -> Path:
    """The files a user's checkout has that the pipeline reads (symlinks resolved)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "Snakefile", dst / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("workflow", "params", "environment.yml", "environment.post-deploy.sh", *extra):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst / name)
    os.symlink("workflow/profiles", dst / "profiles")   # as in the repository
    return dst


def env_for(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDBENCH_", "SNAKEMAKE_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def snakemake(cwd: Path, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """`snakemake --cores 2 ARGS` in ``cwd``; the MLflow store beside it."""
    return subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=cwd, env=env or env_for(cwd.parent),
                          capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict:
    """The first 'Job stats' table of a Snakemake output: rule -> count."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\n", output, re.S)
    assert m, output[-3000:]
    counts = {}
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def write_params(repo: Path, name: str, **changes) -> str:
    prof = yaml.safe_load((repo / "params" / "smoke.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            prof.pop(key, None)
        else:
            prof[key] = value
    (repo / "params" / name).write_text(yaml.safe_dump(prof, sort_keys=False))
    return f"params/{name}"


def profile_counts(path: Path) -> dict:
    """The job counts a profile must give: one data job per dataset, one teacher per dataset
    x teacher arch (x student seed when teacher_seed is null), one distill job per run, one
    evaluate job per dataset x pair x seed (all its methods in one process)."""
    from kdbench.config import load_yaml

    p = load_yaml(path)  # with `extends:` resolved, as kdbench reads a profile
    n_d, n_seeds = len(p["datasets"]), len(p["seeds"])
    teachers = {x["teacher"] for x in p["pairs"]}
    t_seeds = n_seeds if p.get("teacher_seed", 0) is None else 1
    per_pair = [[m for m in p["methods"] if m not in x.get("exclude_methods", [])] for x in p["pairs"]]
    runs = n_d * sum(map(len, per_pair)) * n_seeds
    counts = {"data": n_d, "teacher": n_d * len(teachers) * t_seeds, "distill": runs, "leaderboard": 1, "all": 1}
    # one evaluate rule per distinct method list of the pairs (the first: `evaluate`)
    groups = list(dict.fromkeys(tuple(m) for m in per_pair))
    for k, methods in enumerate(groups):
        counts["evaluate" if k == 0 else f"evaluate_{k + 1}"] = n_d * per_pair.count(list(methods)) * n_seeds
    if p.get("tuning"):  # every method but vanilla: `trials` trials x the tuning seeds, one selection per cell
        tuning = p["tuning"]
        cells = n_d * sum(len([m for m in methods if m != "vanilla"]) for methods in per_pair)
        counts.update(tune_trial=cells * tuning["trials"] * len(tuning["seeds"]), tune_select=cells, tune_export=1)
        if p.get("teacher_seed", 0) is None:
            counts["teacher"] = n_d * len(teachers) * len(set(p["seeds"]) | set(tuning["seeds"]))
    return counts


# ----------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke-profile run shared by the tests below."""
    repo = copy_repo(tmp_path_factory.mktemp("smoke") / "repo", extra=("dvc.yaml", ".dvcignore", ".gitignore"))
    t0 = time.time()
    proc = snakemake(repo, "--configfile", "params/smoke.yaml")
    elapsed = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    print(f"\nsmoke pipeline: {elapsed:.1f} s wall", file=sys.stderr)
    (repo / "smoke_time.txt").write_text(f"{elapsed:.1f}\n")
    return repo, out


def test_smoke_board_has_every_column(smoke):
    import pandas as pd

    repo, out = smoke
    assert job_counts(out) == profile_counts(repo / "params" / "smoke.yaml")
    board_dir = repo / "results" / "leaderboard"
    for name in BOARD_FILES:
        assert (board_dir / name).is_file() and (board_dir / name).stat().st_size > 0, name
    board = pd.read_csv(board_dir / "leaderboard.csv")
    for col in DESIGN_COLUMNS:
        assert col in board.columns, col
    teacher = board[board["method"] == "teacher"]
    assert len(teacher) == 1 and teacher.index[0] == 0      # the teacher row heads its table
    for col in ("top1_mean", "top1_ood_mean", "ece_mean", "nll_mean", "delta_vs_kd", "delta_vs_kd_ci_lo"):
        assert teacher[col].notna().all(), col
    board = board[board["method"] != "teacher"]
    assert sorted(board["method"]) == sorted(SMOKE_METHODS)
    assert (board["n_seeds"] == 2).all()
    for col in ("top1_mean", "top1_std", "top1_sel_mean", "top1_ood_mean", "agreement_mean", "expl_sim_mean",
                "epg_mean", "fss_mean", "ece_mean", "nll_mean", "params", "train_s_mean", "delta_vs_kd",
                "delta_vs_vanilla"):
        assert board[col].notna().all(), col                  # shapes has OOD, masks: everything applies
    assert board.loc[board["method"] != "vanilla", "rs_mean"].notna().all()
    assert board.loc[board["method"] == "kd", "delta_vs_kd"].iloc[0] == 0
    assert (board["delta_vs_kd_test"].dropna() == "paired_t").all() and board["hparams_source"].notna().all()
    runs = pd.read_csv(board_dir / "runs.csv")
    assert len(runs) == 2 * len(SMOKE_METHODS) and set(runs["seed"]) == {0, 1}
    metrics = json.loads((board_dir / "metrics.json").read_text())
    assert set(metrics["shapes"]["resnet14__resnet8"]) == set(SMOKE_METHODS) | {"teacher"}
    page = (board_dir / "leaderboard.html").read_text()
    assert "Claims" in page and "sortable" in page and "data:image/png;base64," in page


def test_smoke_tracking_and_logs(smoke):
    repo, _ = smoke
    db = repo.parent / "mlflow.db"
    assert db.is_file(), "MLflow store not in the test's directory"
    con = sqlite3.connect(db)
    try:
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        boards = con.execute("SELECT count(*) FROM tags WHERE key='kind' AND value='leaderboard'").fetchone()[0]
    finally:
        con.close()
    counts = profile_counts(repo / "params" / "smoke.yaml")  # one MLflow run per teacher and student job, one board
    assert n_runs == counts["teacher"] + counts["distill"] + 1, (n_runs, counts)
    assert boards == 1
    logs = repo / "results" / "logs"
    assert (logs / "leaderboard.log").is_file() and len(list((logs / "students").rglob("*.log"))) == 2 * len(SMOKE_METHODS)
    # a second run has nothing to do
    proc = snakemake(repo, "-n", "--configfile", "params/smoke.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


PLUGIN = '''
"""A distillation method in another package: soft-label KD at temperature 2."""
import os
import time

import torch
import torch.nn.functional as F

from kdbench.methods import Distiller


class HalfKD(Distiller):
    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        # the test's interrupt point: while the file HALFKD_HOLD names exists, the second
        # epoch waits (after the first epoch's checkpoint), so Ctrl-C lands mid-training
        hold = os.environ.get("HALFKD_HOLD")
        while epoch >= 1 and hold and os.path.exists(hold):
            time.sleep(0.05)

    def loss(self, batch):
        x, y = batch["image"], batch["label"]
        logits = self.student(x)
        with torch.no_grad():
            t = self.teacher(x)
        kl = F.kl_div(F.log_softmax(logits / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
        return {"ce": 0.5 * F.cross_entropy(logits, y), "kd": 0.5 * kl}
'''


def make_plugin(where: Path) -> Path:
    """A package with a `kdbench.methods` entry point, importable from PYTHONPATH: the
    same discovery as a pip-installed plugin, without installing anything."""
    (where / "kdbench_halfkd").mkdir(parents=True)
    (where / "kdbench_halfkd" / "__init__.py").write_text(PLUGIN)
    info = where / "kdbench_halfkd-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-halfkd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.methods]\nhalf_kd = kdbench_halfkd:HalfKD\n")
    return where


def test_plugin_method_runs_only_new_jobs(smoke, tmp_path):
    import pandas as pd

    repo, _ = smoke
    plugins = str(make_plugin(tmp_path / "plugins"))
    env = env_for(repo.parent, PYTHONPATH=os.pathsep.join(p for p in (plugins, os.environ.get("PYTHONPATH")) if p))
    prof = yaml.safe_load((repo / "params" / "smoke.yaml").read_text())
    params = write_params(repo, "smoke_plugin.yaml", methods=prof["methods"] + ["half_kd"])

    dry = snakemake(repo, "-n", "--configfile", params, env=env)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    assert job_counts(dry.stdout + dry.stderr) == {"distill": 2, "evaluate": 2, "leaderboard": 1, "all": 1}

    # interrupt the run (Ctrl-C) while the new method trains, then run the same command
    # again: it just works (a training job killed after an epoch resumes from its checkpoint).
    # Both seeds' jobs hold in their second epoch (the plugin's HALFKD_HOLD) until the
    # interrupt: it lands mid-training whatever the machine's speed.
    hold = tmp_path / "hold"
    hold.touch()
    # Ctrl-C's SIGINT at its default for the run: a shell starts a background command (`make
    # test &`, a CI wrapper) with SIGINT ignored, and an ignored signal stays ignored through
    # every exec (Snakemake and its jobs would never see the interrupt)
    proc = subprocess.Popen([SNAKEMAKE, "--cores", "2", "--configfile", params], cwd=repo,
                            env=dict(env, HALFKD_HOLD=str(hold)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs_dir = repo / "results" / "students" / "shapes" / "resnet14__resnet8" / "half_kd"
    logs = repo / "results" / "logs" / "students" / "shapes" / "resnet14__resnet8" / "half_kd"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(runs_dir.glob("s*/checkpoint.pt"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert len(list(runs_dir.glob("s*/checkpoint.pt"))) == 2, "the new method's jobs did not reach their hold"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    finally:
        hold.unlink()
    assert not list((repo / ".snakemake" / "locks").glob("*")), "a stale lock would stop the next run"
    assert proc.returncode != 0, "Snakemake finished its run although it was interrupted"
    interrupted = sorted(p.parent.name for p in runs_dir.glob("s*/checkpoint.pt"))
    assert interrupted == ["s0", "s1"], interrupted

    again = snakemake(repo, "--configfile", params, env=env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    ran = job_counts(out)
    assert set(ran) <= {"distill", "evaluate", "leaderboard", "all"} and ran["leaderboard"] == 1
    assert "rule teacher" not in out and "rule data" not in out
    for seed_dir in interrupted:
        assert "resuming after epoch" in (logs / f"{seed_dir}.log").read_text()
    assert not list(runs_dir.glob("s*/checkpoint.pt"))
    # the cell's evaluate job evaluated the new method only: every other record was reused
    for seed in (0, 1):
        log = (repo / "results" / "logs" / "evals" / "shapes" / "resnet14__resnet8" / f"s{seed}.log").read_text()
        assert log.count("record reused") == len(SMOKE_METHODS) and "half_kd:" in log
    board = pd.read_csv(repo / "results" / "leaderboard" / "leaderboard.csv")
    assert sorted(board["method"]) == sorted(SMOKE_METHODS + ["half_kd", "teacher"])
    row = board[board["method"] == "half_kd"].iloc[0]
    assert row["n_seeds"] == 2 and 0 <= row["top1_mean"] <= 1 and not pd.isna(row["delta_vs_kd"])

    # compare: the new method against the board
    cmp = subprocess.run([str(BIN / "kdbench"), "compare", "half_kd", "--params", params, "--format", "csv"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    table = pd.read_csv(__import__("io").StringIO(cmp.stdout))
    assert set(table["scope"]) == {"cell", "overall"}        # the per-cell rows, then the summary block's
    table = table[table["scope"] == "cell"]
    assert sorted(table["other"]) == sorted(SMOKE_METHODS) and table["p_value"].notna().any()
    assert (table["test"] == "paired_t").all() and table["p_holm"].notna().any()


# ----------------------------------------------------------------------------- DVC
def run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def test_dvc_repro_metrics_show_and_diff(smoke, tmp_path):
    """A fresh git + DVC repository: `KDBENCH_PROFILE=smoke dvc repro` (the smoke run's
    results are copied in with their Snakemake metadata, so no job re-runs), `dvc metrics
    show` shows the board, a changed board shows up in `dvc metrics diff`."""
    import pandas as pd

    src, _ = smoke
    repo = copy_repo(tmp_path / "repo", extra=("dvc.yaml", ".dvcignore", ".gitignore", "kdbench"))
    shutil.copytree(src / "results", repo / "results", symlinks=True)
    shutil.copytree(src / ".snakemake", repo / ".snakemake", symlinks=True,
                    ignore=shutil.ignore_patterns("log", "locks", "incomplete"))
    env = env_for(tmp_path, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                  GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], repo, env)
    run([dvc, "init", "-q"], repo, env)
    run([dvc, "config", "core.analytics", "false"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "kdbench"], repo, env)

    run([dvc, "repro"], repo, dict(env, KDBENCH_PROFILE="smoke"))
    shown = json.loads(run([dvc, "metrics", "show", "--json"], repo, env))
    board = pd.read_csv(repo / "results" / "leaderboard" / "leaderboard.csv")
    kd = board[board["method"] == "kd"].iloc[0]
    flat = json.dumps(shown)
    assert "results/leaderboard/metrics.json" in flat
    metrics = next(iter(shown.values()))["data"]["results/leaderboard/metrics.json"]["data"]
    assert metrics["shapes"]["resnet14__resnet8"]["kd"]["top1_mean"] == pytest.approx(kd["top1_mean"], abs=1e-6)
    assert "half_kd" not in metrics["shapes"]["resnet14__resnet8"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "board v1"], repo, env)

    # a new version of the board: the smoke runs of seed 0 only (only the board job runs)
    write_params(repo, "smoke1.yaml", seeds=[0])
    run([dvc, "repro"], repo, dict(env, KDBENCH_PROFILE="smoke1"))
    diff = json.loads(run([dvc, "metrics", "diff", "--json"], repo, env))
    changes = diff["results/leaderboard/metrics.json"]
    assert changes["shapes.resnet14__resnet8.kd.n_seeds"] == {"old": 2, "new": 1, "diff": -1}
    assert "shapes.resnet14__resnet8.kd.top1_mean" in changes or \
        any(k.endswith(".top1_mean") for k in changes)
