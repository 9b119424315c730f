"""MLflow tracking. Every teacher/distill job is one run; the board rule logs the tables.

The tracking URI comes from ``MLFLOW_TRACKING_URI``, else a SQLite store in the project
(``mlflow.db``, artifacts in ``mlartifacts/``). Several processes creating a fresh SQLite
store at once lose runs, so the store is created once (``kdbench init-tracking``, run by
the pipeline before any job) and, when a job finds no store, under a file lock.
MLflow is imported only when something is logged, and a logging failure never stops a
training job: it is reported on stderr and tracking is switched off for that job.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Optional

DEFAULT_EXPERIMENT = "kdbench"


def tracking_uri(root: Optional[os.PathLike] = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    from kdbench.config import project_root

    root = Path(root) if root is not None else project_root()
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> Optional[str]:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


@contextmanager
def _store_lock(uri: str):
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _retry(fn, *args, attempts: int = 8, **kw):
    delay = 0.2
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as err:  # SQLite "database is locked" under parallel writers
            if i == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


def init_store(experiment: str = DEFAULT_EXPERIMENT, uri: Optional[str] = None) -> str:
    """Create the store and the experiment once (idempotent, safe to call concurrently)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            client.create_experiment(experiment, artifact_location=_artifact_root(uri))
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


class Tracker:
    """One MLflow run. All methods are safe: errors are reported and switch tracking off."""

    def __init__(self, enabled: bool = True, experiment: str = DEFAULT_EXPERIMENT, uri: Optional[str] = None):
        self.enabled = enabled
        self.experiment = experiment
        self.uri = uri
        self.client = None
        self.run_id: Optional[str] = None
        self._pending: list = []

    def _fail(self, what: str, err: Exception) -> None:
        print(f"[kdbench] MLflow {what} failed, tracking off for this job: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        self.enabled = False

    def start(self, run_name: str, params: dict, tags: Optional[dict] = None) -> None:
        if not self.enabled:
            return
        try:
            from mlflow.entities import Param, RunTag
            from mlflow.tracking import MlflowClient

            self.uri = self.uri or tracking_uri()
            # the first touch of a SQLite store may create/migrate it: one process at a time
            with _store_lock(self.uri):
                client = MlflowClient(tracking_uri=self.uri)
                exp = _retry(client.get_experiment_by_name, self.experiment)
                if exp is None:
                    _retry(client.create_experiment, self.experiment, artifact_location=_artifact_root(self.uri))
                    exp = _retry(client.get_experiment_by_name, self.experiment)
            run = _retry(client.create_run, exp.experiment_id, run_name=run_name,
                         tags={"mlflow.runName": run_name, **(tags or {})})
            self.client, self.run_id = client, run.info.run_id
            items = [Param(k, v) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                _retry(client.log_batch, self.run_id, params=items[i:i + 100])
        except Exception as err:
            self._fail("start", err)

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                     if v is not None and isinstance(v, (int, float))]
            if batch:
                _retry(self.client.log_batch, self.run_id, metrics=batch)
        except Exception as err:
            self._fail("log", err)

    def log_artifacts(self, paths: Iterable[os.PathLike]) -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            for p in paths:
                if Path(p).exists():
                    _retry(self.client.log_artifact, self.run_id, str(p))
        except Exception as err:
            self._fail("artifact upload", err)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            _retry(self.client.set_terminated, self.run_id, status)
        except Exception as err:
            self._fail("finish", err)
