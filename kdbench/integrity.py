"""Finished outputs that are whole: each one's size and SHA-256 recorded where it is written.

A job's final outputs (a teacher's or student's ``model.pt`` and ``metrics.json``, an
evaluation record ``results/evals/.../sN.json``) are *sealed* right after their atomic
write: a hidden sidecar ``.NAME.sum`` beside ``NAME`` records its size, SHA-256 and
modification time. :func:`check_file` compares a file with its seal: another size is a
truncated or overwritten file; the same size and modification time is trusted from the
stat alone (cheap: the pipeline checks every finished output before the DAG is built);
otherwise the content is hashed. A file written before seals existed is checked by its
format (JSON parses, a torch file's zip directory reads).

:func:`check_finished` is the pipeline's check (workflow/Snakefile): a damaged output
loses its run's completion marker (a run's ``metrics.json``, written last; an evaluation
record itself), so that exactly that job runs again; nothing else is touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Tuple
from kdbench.config import layout
from kdbench.io import write_text
from kdbench.errors import KDBenchError


def seal_path(path: os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.sum")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(path: os.PathLike) -> None:
    """Record ``path``'s size, SHA-256 and mtime in its sidecar (written atomically)."""
    path = Path(path)
    st = path.stat()
    blob = {"bytes": st.st_size, "sha256": _sha256(path), "mtime_ns": st.st_mtime_ns}
    write_text(json.dumps(blob, sort_keys=True) + "\n", seal_path(path))


def _format_problem(path: Path) -> Optional[str]:
    """Without a seal: the file must at least be readable in its format."""
    if path.suffix == ".json":
        try:
            if not isinstance(json.loads(path.read_text()), dict):
                return "does not hold a JSON object"
        except (OSError, ValueError) as err:
            return f"is not readable JSON ({type(err).__name__}: truncated or corrupt)"
        return None
    if path.suffix == ".pt":
        return torch_file_problem(path)
    return None


def torch_file_problem(path: os.PathLike) -> Optional[str]:
    """None when a torch file's zip directory reads (a truncated file's does not), else why."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            zf.namelist()
    except (OSError, zipfile.BadZipFile) as err:
        return f"is not a readable torch file ({err})"
    return None


def check_file(path: os.PathLike) -> Optional[str]:
    """None when ``path`` is whole, else what is wrong with it (see the module docstring).
    A missing file is not this check's business (None)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(seal_path(path).read_text())
        size, digest, mtime = int(rec["bytes"]), str(rec["sha256"]), rec.get("mtime_ns")
    except (OSError, ValueError, KeyError, TypeError):
        return _format_problem(path)
    if st.st_size != size:
        return f"has {st.st_size} bytes, {size} were written (truncated or overwritten)"
    if st.st_mtime_ns == mtime:
        return None  # untouched since it was sealed: the stat is enough
    if _sha256(path) != digest:
        return "does not match the SHA-256 recorded when it was written (corrupt)"
    return None


def completion_marker(path: os.PathLike) -> Path:
    """The file whose removal makes the job that wrote ``path`` run again: a run
    directory's ``metrics.json`` (its last output), else the file itself."""
    path = Path(path)
    return path.with_name(layout.METRICS) if path.name == layout.MODEL else path


def check_finished(paths: Iterable[os.PathLike], log=None) -> List[Tuple[Path, str]]:
    """Check every existing file of ``paths``; a damaged one loses its completion marker
    (and that marker's seal), so that exactly its job runs again. Returns (file, problem)."""
    damaged = []
    for path in map(Path, paths):
        problem = check_file(path)
        if problem is None:
            continue
        marker = completion_marker(path)
        print(f"kdbench: {path} {problem}: its job runs again (removed {marker.name})",
              file=log or sys.stderr)
        marker.unlink(missing_ok=True)
        seal_path(marker).unlink(missing_ok=True)
        damaged.append((path, problem))
    return damaged


def require_whole(path: os.PathLike, redo: str) -> None:
    """A KDBenchError naming ``path``, what is wrong and the command ``redo`` that makes
    it again, when ``path`` is damaged (a reader's check before it uses the file)."""
    problem = check_file(path)
    if problem is not None:
        raise KDBenchError(f"{path} {problem}: make it again: {redo}")
