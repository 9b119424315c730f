"""Atomic writes: a file appears whole or not at all.

torch is imported by the two functions that read or write tensor files, not here: a
process that only writes JSON (an MLflow writer, the tracking store's set-up) does not pay
torch's 2 s start."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from kdbench.errors import KDBenchError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic(path: os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_torch(obj: Any, path: os.PathLike) -> Path:
    import torch  # heavy: only where a tensor file is written (module docstring)

    return _atomic(path, lambda fh: torch.save(obj, fh))


def write_text(text: str, path: os.PathLike) -> Path:
    return _atomic(path, lambda fh: fh.write(text.encode()))


def write_json(obj: Any, path: os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n", path)


def json_types(obj: Any) -> Any:
    """``obj`` as a reader of its JSON file gets it (tensors and numpy scalars as numbers or
    lists, tuples as lists, paths as strings)."""
    return json.loads(json.dumps(obj, default=_jsonable))


def _jsonable(x):
    torch = sys.modules.get("torch")  # without torch loaded, x is no tensor
    if torch is not None and isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_torch(path: os.PathLike, map_location="cpu") -> Any:
    import torch  # heavy: only where a tensor file is read (module docstring)

    return torch.load(path, map_location=map_location, weights_only=True)


def file_sha(path: os.PathLike, chars: int = 16) -> str:
    """The first ``chars`` hex digits of a file's SHA-256 (read in 1 MiB chunks): the key
    of the caches kept beside a model file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:chars]


def cached_json(path: os.PathLike, key: dict, compute: Callable[[], dict], *, read_only_ok: bool = False) -> dict:
    """``{"key": key, **compute()}``, cached in the JSON file ``path``: recomputed when the
    file is missing, unreadable or holds another key, and written atomically (jobs that
    race write the same content: ``compute`` must be deterministic). ``read_only_ok``: a
    folder that cannot be written to gives the result uncached (with a note on stderr)
    instead of the error. Returns what a reader of the file gets (JSON types)."""
    path = Path(path)
    if path.is_file():
        try:
            blob = json.loads(path.read_text())
            if blob.get("key") == key:
                return blob
        except ValueError:
            pass
    blob = {"key": key, **compute()}
    try:
        write_json(blob, path)
    except OSError as err:
        if not read_only_ok:
            raise
        print(f"[kdbench] could not cache {path} ({err}); using it uncached", file=sys.stderr, flush=True)
    return json.loads(json.dumps(blob))


JOB_LOCK = ".kdbench-job.lock"


class JobLock:
    """A job's hold on its output directory, for the job's whole life: an flock on
    ``DIR/.kdbench-job.lock`` (holding its pid), which the kernel releases when the process
    dies, however it dies. A second job for the same directory is refused, and the
    pipeline's stale-lock clean-up (workflow/Snakefile) treats a held one as a live run."""

    def __init__(self, out_dir: os.PathLike):
        self.path = Path(out_dir) / JOB_LOCK
        self.fh = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise KDBenchError(f"another job (pid {pid}) is writing {self.path.parent}: wait until it ends, or "
                               f"stop it (kill {pid}) and run this command again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc):
        self.fh.close()  # releases the flock
        return False


def job_lock_holder(out_dir: os.PathLike):
    """The pid (text) of a live job holding ``out_dir``'s JobLock, else None."""
    import fcntl

    path = Path(out_dir) / JOB_LOCK
    try:
        fh = open(path)
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return fh.read().strip() or "?"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def live_jobs(lock_files) -> list:
    """(output directory, pid) of every live job (JobLock) among the outputs that Snakemake's
    lock files (.snakemake/locks/*.output.lock: one path a line) list."""
    outputs = {line.strip() for f in lock_files for line in Path(f).read_text(errors="replace").splitlines()
               if line.strip()}
    dirs = sorted({os.path.dirname(o) for o in outputs})
    return [(d, pid) for d in dirs for pid in [job_lock_holder(d)] if pid is not None]
