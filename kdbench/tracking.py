"""MLflow tracking. Every teacher/distill job is one run; the board rule logs the tables.

The tracking URI comes from ``MLFLOW_TRACKING_URI``, else a SQLite store in the project
(``mlflow.db``, artifacts in ``mlartifacts/``). Several processes creating a fresh SQLite
store at once lose runs, so the store is created once (``kdbench init-tracking``, run by
the pipeline before any job) and, when a job finds no store, under a file lock.
MLflow is imported only when something is logged, and a logging failure never stops a
training job: it is reported on stderr and tracking is switched off for that job.

Provenance: every run is tagged with the git commit, whether the work tree was dirty
(``kdbench.git_dirty``) and its method's distribution and version (a plugin's own).
Artifacts live in ``mlartifacts/`` beside ``mlflow.db``; MLflow stores that location
absolute, so opening a store that was copied or moved points it at its own
``mlartifacts/`` first (:func:`rebase_artifacts`): a copy never writes into the original.

One MLflow run per (job, config hash): a run carries the tag ``kdbench.run_key``; a
resumed or re-run job (live) and a re-synced record (deferred) find that run and update
it (status, the metrics it does not have yet) instead of creating another one. A job
stopped by SIGTERM or Ctrl-C ends its run as KILLED, a failed one as FAILED; the next
attempt of the same job turns the same run into FINISHED.

Two modes. *live* (a job run by hand): the job logs to MLflow as it trains. *deferred*
(the pipeline): the job writes its complete run record — params, tags, per-epoch and final
metrics, artifacts, start/end times — to ``mlflow_run.json`` beside its outputs, and
``kdbench sync-tracking`` (run by the leaderboard rule, and when the pipeline stops on an
error) replays every unsynced record as one MLflow run, from one process. The pipeline's
jobs then never import MLflow (about 3 s each here) nor write to SQLite concurrently.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Optional
from kdbench.config import project_root
from kdbench.errors import KDBenchError
from kdbench.io import write_json

DEFAULT_EXPERIMENT = "kdbench"


def tracking_uri(root: Optional[os.PathLike] = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(root) if root is not None else project_root()
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> Optional[str]:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def rebase_artifacts(uri: str) -> int:
    """Point a SQLite store's kdbench artifact locations at the ``mlartifacts/`` beside it.

    MLflow stores absolute locations (the experiment's and every run's); a store copied or
    moved elsewhere would go on writing its artifacts into the old place. Every experiment
    whose location is another store's ``mlartifacts`` (what :func:`init_store` creates) is
    moved, with its runs' locations, to this store's; anything else (MLflow's default
    experiment, a remote store) is left alone. Called under the store lock before a client
    opens the store; returns the number of experiments moved."""
    import sqlite3

    root = _artifact_root(uri)
    path = Path(uri[len("sqlite:///"):]) if root else None
    if path is None or not path.is_file():
        return 0
    con = sqlite3.connect(path, timeout=30)
    try:
        with con:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
            moved = [(eid, loc) for eid, loc in rows if loc and loc != root and loc.startswith("file://")
                     and loc.rstrip("/").endswith("/mlartifacts")]
            for eid, loc in moved:
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                            "AND substr(artifact_uri, 1, ?) = ?", (root, len(loc) + 1, eid, len(loc), loc))
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (root, eid))
    except sqlite3.OperationalError:  # not (yet) an MLflow store: nothing to move
        return 0
    finally:
        con.close()
    return len(moved)


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


def wait_for_sqlite(uri: str, wait_s: float) -> None:
    """Wait up to ``wait_s`` seconds until a SQLite store takes a write (another process,
    e.g. an MLflow UI or a sync, may hold it); then a one-line KDBenchError."""
    import sqlite3

    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if path is None or not path.is_file():
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = sqlite3.connect(path, timeout=min(1.0, max(wait_s, 0.01)), isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
                return
            finally:
                con.close()
        except sqlite3.OperationalError as err:
            if time.monotonic() >= deadline:
                raise KDBenchError(f"MLflow store {path} is locked by another process ({err}) after waiting "
                                   f"{wait_s:g} s: close what holds it (an MLflow UI, another run) and run the "
                                   f"same command again, or set tracking: {{enabled: false}}") from None
            time.sleep(0.2)


def init_store(experiment: str = DEFAULT_EXPERIMENT, uri: Optional[str] = None, wait_s: float = 60.0) -> str:
    """Create the store and the experiment once (idempotent, safe to call concurrently). A
    store that another process holds is waited for up to ``wait_s`` seconds, then a
    one-line KDBenchError (not MLflow's traceback)."""
    uri = uri or tracking_uri()
    with _store_lock(uri):
        wait_for_sqlite(uri, wait_s)
        rebase_artifacts(uri)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                client.create_experiment(experiment, artifact_location=_artifact_root(uri))
        except MlflowException as err:
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise KDBenchError(f"MLflow store {uri} could not be opened: {first}") from None
    return uri


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=project_root())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """The project's checked-out commit, or "unknown" (no git, not a repository)."""
    return (_git("rev-parse", "HEAD") or "").strip() or "unknown"


def git_dirty() -> Optional[bool]:
    """Whether a tracked file differs from that commit (None: no git to ask)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def method_distribution(method: Optional[str]) -> Dict[str, str]:
    """Where a method's code comes from: the distribution (name and version) whose
    ``kdbench.methods`` entry point registers it (a plugin), else kdbench's own."""
    from importlib import metadata

    for ep in metadata.entry_points(group="kdbench.methods") if method else ():
        if ep.name == method and getattr(ep, "dist", None) is not None:
            return {"dist": ep.dist.metadata["Name"], "version": ep.dist.version}
    try:
        return {"dist": "kdbench", "version": metadata.version("kdbench")}
    except metadata.PackageNotFoundError:
        return {"dist": "kdbench", "version": "unknown"}


def provenance_tags(method: Optional[str]) -> Dict[str, str]:
    """The tags every tracked run carries: the git commit, whether the work tree was dirty
    (``true`` / ``false`` / ``unknown``), and the method's distribution and version."""
    dirty = git_dirty()
    dist = method_distribution(method)
    return {"kdbench.git_commit": git_commit(), "kdbench.git_dirty": "unknown" if dirty is None else str(dirty).lower(),
            "kdbench.method_dist": dist["dist"], "kdbench.method_version": dist["version"]}


def flatten(d: dict, prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


SPOOL_NAME = "mlflow_run.json"
RUN_KEY_TAG = "kdbench.run_key"


def run_key(run_name: str, config_hash: Optional[str]) -> str:
    """The identity of a job's MLflow run: its name and its config hash."""
    return hashlib.sha256(f"{run_name}\0{config_hash or ''}".encode()).hexdigest()[:20]


class Tracker:
    """One MLflow run. All methods are safe: errors are reported and switch tracking off.

    With ``spool`` (a path), nothing is sent: the run is recorded and written to that file
    by :meth:`finish`, to be replayed later by :func:`sync_spools`."""

    def __init__(self, enabled: bool = True, experiment: str = DEFAULT_EXPERIMENT, uri: Optional[str] = None,
                 spool: Optional[os.PathLike] = None):
        self.enabled = enabled
        self.experiment = experiment
        self.uri = uri
        self.client = None
        self.run_id: Optional[str] = None
        self.spool = Path(spool) if spool is not None else None
        self.record: Optional[dict] = None
        #: (metric, step) -> value already in the MLflow run (a reused run)
        self.logged: Dict[tuple, float] = {}

    def _fail(self, what: str, err: Exception) -> None:
        print(f"[kdbench] MLflow {what} failed, tracking off for this job: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        self.enabled = False

    @property
    def active(self) -> bool:
        return self.enabled and (self.record is not None or self.run_id is not None)

    def start(self, run_name: str, params: dict, tags: Optional[dict] = None) -> None:
        if not self.enabled:
            return
        tags = {**provenance_tags(tags.get("method") if tags else None), **(tags or {})}
        if params.get("config_hash"):  # a job: one run per (job, config hash)
            tags[RUN_KEY_TAG] = run_key(run_name, params["config_hash"])
        if self.spool is not None:
            self.record = {"experiment": self.experiment, "run_name": run_name, "params": flatten(params),
                           "tags": tags, "start_ms": _now_ms(), "metrics": [], "artifacts": [],
                           "status": "RUNNING", "end_ms": None, "synced_run_id": None}
            return
        try:
            self.uri = self.uri or tracking_uri()
            self.client, self.run_id, self.logged = _open_run(self.uri, self.experiment, run_name, flatten(params),
                                                              tags, None)
        except Exception as err:
            self._fail("start", err)

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        if not self.active:
            return
        now = _now_ms()
        rows = [(k, float(v), now, step or 0) for k, v in metrics.items()
                if v is not None and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.record is not None:
            self.record["metrics"] += [list(r) for r in rows]
            return
        try:
            _log_rows(self.client, self.run_id, _new_rows(rows, self.logged))
        except Exception as err:
            self._fail("log", err)

    def log_artifacts(self, paths: Iterable[os.PathLike]) -> None:
        if not self.active:
            return
        paths = [Path(p) for p in paths if Path(p).exists()]
        if self.record is not None:
            base = self.spool.parent.resolve()
            self.record["artifacts"] += [os.path.relpath(p.resolve(), base) for p in paths]
            return
        try:
            for p in paths:
                _retry(_log_artifact, self.client, self.run_id, p)
        except Exception as err:
            self._fail("artifact upload", err)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        if self.record is not None:
            self.record.update(status=status, end_ms=_now_ms())
            try:
                write_json(self.record, self.spool)
            except OSError as err:
                self._fail("spool write", err)
            return
        try:
            _retry(self.client.set_terminated, self.run_id, status)
        except Exception as err:
            self._fail("finish", err)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_rows(rows, logged: Dict[tuple, float]):
    """The rows (key, value, ts, step) the run does not already hold with that value."""
    return [r for r in rows if logged.get((r[0], int(r[3]))) != float(r[1])]


def _open_run(uri: str, experiment: str, run_name: str, params: Dict[str, str], tags: dict, start_ms):
    """(client, run_id, logged): the experiment's run with this ``kdbench.run_key`` tag,
    set RUNNING again, with the (metric, step) -> value it already holds; else a new run."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    # the first touch of a SQLite store may create/migrate it: one process at a time
    with _store_lock(uri):
        _retry(rebase_artifacts, uri)
        client = MlflowClient(tracking_uri=uri)
        exp = _retry(client.get_experiment_by_name, experiment)
        if exp is None:
            _retry(client.create_experiment, experiment, artifact_location=_artifact_root(uri))
            exp = _retry(client.get_experiment_by_name, experiment)
        key = tags.get(RUN_KEY_TAG)
        found = []
        if key:
            found = _retry(client.search_runs, [exp.experiment_id],
                           filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=10,
                           order_by=["attributes.start_time ASC"])
        if found:
            run = found[0]
            _retry(client.update_run, run.info.run_id, status="RUNNING")
        else:
            run = _retry(client.create_run, exp.experiment_id, start_time=start_ms, run_name=run_name,
                         tags={"mlflow.runName": run_name, **tags})
    run_id = run.info.run_id
    logged: Dict[tuple, float] = {}
    have = dict(run.data.params) if found else {}
    if found:
        for metric in run.data.metrics:
            for m in _retry(client.get_metric_history, run_id, metric):
                logged[(m.key, int(m.step))] = float(m.value)
        for k, v in tags.items():
            if run.data.tags.get(k) != v:
                _retry(client.set_tag, run_id, k, v)
    # a param already logged keeps its first value (MLflow refuses to change one)
    items = [Param(k, v) for k, v in params.items() if k not in have]
    for i in range(0, len(items), 100):
        _retry(client.log_batch, run_id, params=items[i:i + 100])
    return client, run_id, logged


def _log_artifact(client, run_id: str, path: os.PathLike) -> None:
    """Upload one file into the run's artifact location as the store holds it now (not
    MLflow's per-process cache of it, which a store moved by :func:`rebase_artifacts`
    would leave pointing at the old place)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(client.get_run(run_id).info.artifact_uri).log_artifact(str(path))


def _log_rows(client, run_id: str, rows) -> None:
    from mlflow.entities import Metric

    batch = [Metric(k, v, ts, step) for k, v, ts, step in rows]
    for i in range(0, len(batch), 1000):
        _retry(client.log_batch, run_id, metrics=batch[i:i + 1000])


def sync_spools(root: os.PathLike, uri: Optional[str] = None) -> Dict[str, int]:
    """Replay every finished, unsynced ``mlflow_run.json`` under ``root`` as one MLflow run
    each (idempotent: a synced record remembers its run id). Returns counts."""
    uri = uri or tracking_uri()
    counts = {"synced": 0, "already": 0, "failed": 0}
    for spool in sorted(Path(root).rglob(SPOOL_NAME)):
        try:
            rec = json.loads(spool.read_text())
        except (OSError, ValueError) as err:
            print(f"[kdbench] skipping unreadable {spool}: {err}", file=sys.stderr)
            counts["failed"] += 1
            continue
        if rec.get("synced_run_id"):
            counts["already"] += 1
            continue
        try:
            tags = dict(rec["tags"])
            if rec["params"].get("config_hash"):
                tags.setdefault(RUN_KEY_TAG, run_key(rec["run_name"], rec["params"]["config_hash"]))
            client, run_id, logged = _open_run(uri, rec["experiment"], rec["run_name"], rec["params"], tags,
                                               rec["start_ms"])
            _log_rows(client, run_id, _new_rows([tuple(r) for r in rec["metrics"]], logged))
            for rel in rec["artifacts"]:
                path = spool.parent / rel
                if path.exists():
                    _retry(_log_artifact, client, run_id, path)
            _retry(client.set_terminated, run_id, rec["status"], end_time=rec["end_ms"])
            rec["synced_run_id"] = run_id
            write_json(rec, spool)
            counts["synced"] += 1
        except Exception as err:
            print(f"[kdbench] MLflow sync of {spool} failed: {type(err).__name__}: {err}", file=sys.stderr)
            counts["failed"] += 1
    return counts
