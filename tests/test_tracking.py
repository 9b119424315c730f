"""MLflow tracking: parallel writers never lose runs; failures never stop a job."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WRITER = r'''
import sys
from kdbench.tracking import Tracker
i = int(sys.argv[1])
t = Tracker(experiment="parallel")
t.start(f"job-{i}", {"config": {"seed": i, "recipe": {"lr": 0.05}}, "config_hash": f"h{i}"}, tags={"kind": "test"})
for epoch in range(1, 4):
    t.log_metrics({"loss": 1.0 / epoch, "val_top1": 0.1 * epoch}, step=epoch)
t.log_metrics({"top1": 0.5 + i / 100})
t.finish()
print("ok", t.enabled, t.run_id)
'''


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=100)


@pytest.mark.parametrize("precreate", [True, False], ids=["store-created-first", "fresh-store"])
def test_six_parallel_writers_lose_no_run(tmp_path, precreate):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT))
    if precreate:
        from kdbench.tracking import init_store

        init_store("parallel", uri)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.startswith("ok True"), (out, err)
    runs = _runs(uri, "parallel")
    assert len(runs) == 6
    assert sorted(r.data.params["config.seed"] for r in runs) == [str(i) for i in range(6)]
    assert all(r.info.status == "FINISHED" and r.data.metrics["loss"] == pytest.approx(1 / 3) for r in runs)


def test_logging_failure_is_reported_not_raised(tmp_path, capsys):
    from kdbench.tracking import Tracker

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    t = Tracker(uri=f"sqlite:///{blocker}/sub/mlflow.db")
    t.start("x", {"a": 1})
    t.log_metrics({"loss": 1.0}, step=1)
    t.finish()
    assert not t.enabled
    assert "MLflow start failed" in capsys.readouterr().err


def test_flatten_params():
    from kdbench.tracking import flatten

    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": "1", "a.c.d": "[1, 2]", "e": "None"}


def test_deferred_records_sync_once_as_runs(tmp_path):
    from kdbench.tracking import SPOOL_NAME, Tracker, sync_spools

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for i in range(3):
        out = tmp_path / "results" / f"run{i}"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text("{}")
        t = Tracker(experiment="deferred", spool=out / SPOOL_NAME)
        t.start(f"job-{i}", {"config": {"seed": i}}, tags={"kind": "student"})
        for epoch in (1, 2):
            t.log_metrics({"loss": 1.0 / epoch}, step=epoch)
        t.log_metrics({"top1": 0.5})
        t.log_artifacts([out / "metrics.json"])
        t.finish()
        assert t.client is None  # nothing was sent while the job ran
    assert sync_spools(tmp_path / "results", uri) == {"synced": 3, "already": 0, "failed": 0}
    assert sync_spools(tmp_path / "results", uri) == {"synced": 0, "already": 3, "failed": 0}
    runs = _runs(uri, "deferred")
    assert sorted(r.info.run_name for r in runs) == ["job-0", "job-1", "job-2"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.metrics["top1"] == 0.5
    # every run carries its own job's params (not a substring test: "" or "01" would pass that)
    assert {r.info.run_name: r.data.params["config.seed"] for r in runs} == {"job-0": "0", "job-1": "1", "job-2": "2"}
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking_uri=uri).get_metric_history(runs[0].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 0.5)]
    assert [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(runs[0].info.run_id)] == ["metrics.json"]


def test_a_copied_store_writes_its_artifacts_beside_itself(tmp_path):
    """Issue 24: MLflow keeps absolute artifact locations; a store copied elsewhere
    (mlflow.db + mlartifacts/) writes its new artifacts — a new run's and a reopened run's —
    under its own mlartifacts/, never into the original's, and its old artifacts are read there."""
    import shutil

    from mlflow.tracking import MlflowClient

    from kdbench.tracking import Tracker, init_store

    art = tmp_path / "metrics.json"
    art.write_text("{}")
    (tmp_path / "a").mkdir()
    uri_a, uri_b = (f"sqlite:///{tmp_path / d / 'mlflow.db'}" for d in ("a", "b"))
    init_store("moved", uri_a)
    t = Tracker(experiment="moved", uri=uri_a)
    t.start("job-1", {"config_hash": "h1"})
    t.log_artifacts([art])
    t.finish()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    original = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    for name, key in (("job-1", "h1"), ("job-2", "h2")):  # the same run reopened, and a new one
        t = Tracker(experiment="moved", uri=uri_b)
        t.start(name, {"config_hash": key})
        art.write_text(name)
        t.log_artifacts([art])
        t.finish()
        assert t.enabled
    assert sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")) == original
    client = MlflowClient(tracking_uri=uri_b)
    exp = client.get_experiment_by_name("moved")
    assert exp.artifact_location == (tmp_path / "b" / "mlartifacts").as_uri()
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["job-1", "job-2"]
    for name, run in runs.items():
        assert run.info.artifact_uri.startswith(exp.artifact_location + "/")
        local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / name)))
        assert local.read_text() == name  # job-1: the copied artifact, overwritten in b only
    assert (tmp_path / "a" / "mlartifacts").is_dir() and [f.read_text() for f in (tmp_path / "a").rglob(
        "metrics.json")] == ["{}"]


def test_runs_record_the_git_commit_its_dirty_flag_and_the_methods_distribution(tmp_path, monkeypatch):
    """Issue 24: every run's tags hold the commit, whether the work tree was dirty, and the
    distribution + version of its method (a plugin's own, from its entry point)."""
    import json

    from kdbench import tracking
    from kdbench.tracking import SPOOL_NAME, Tracker
    from tests.test_engine import make_plugin

    site = tmp_path / "site"
    site.mkdir()
    make_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    assert tracking.method_distribution("smooth_ce") == {"dist": "kdbench-plugin-ls", "version": "0.1"}
    assert tracking.method_distribution("kd")["dist"] == "kdbench"
    monkeypatch.setattr(tracking, "_git", lambda *a: {"rev-parse": "abc123\n", "status": " M kdbench/x.py\n"}[a[0]])
    t = Tracker(spool=tmp_path / SPOOL_NAME)
    t.start("job", {"config_hash": "h"}, tags={"method": "smooth_ce"})
    t.finish()
    tags = json.loads((tmp_path / SPOOL_NAME).read_text())["tags"]
    assert {k: tags[k] for k in tags if k.startswith("kdbench.") and k != "kdbench.run_key"} == {
        "kdbench.git_commit": "abc123", "kdbench.git_dirty": "true", "kdbench.method_dist": "kdbench-plugin-ls",
        "kdbench.method_version": "0.1"}
    monkeypatch.setattr(tracking, "_git", lambda *a: {"rev-parse": "abc123\n", "status": ""}[a[0]])
    assert tracking.git_dirty() is False
    monkeypatch.setattr(tracking, "_git", lambda *a: None)
    assert tracking.provenance_tags(None)["kdbench.git_dirty"] == "unknown"
    assert tracking.git_commit() == "unknown"
