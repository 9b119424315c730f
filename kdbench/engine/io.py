"""Atomic writes: a file appears whole or not at all."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
    return _atomic(path, lambda fh: torch.save(obj, fh))


def write_text(text: str, path: os.PathLike) -> Path:
    return _atomic(path, lambda fh: fh.write(text.encode()))


def write_json(obj: Any, path: os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n", path)


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_torch(path: os.PathLike, map_location="cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)
