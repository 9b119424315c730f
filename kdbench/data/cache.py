"""Prepared datasets on disk: ``results/data/{dataset}/data.pt``.

The data rule builds a dataset once and stores its tensors; every job then loads them in
a fraction of a second instead of regenerating them. The file records the options it was
built with, and ``meta.json`` its size and SHA-256 (:func:`check_prepared`, which the
Snakefile runs before building the DAG, so that a truncated or corrupt file is rebuilt by
the data job). A job finds the file built with other options (another profile with the
same results_dir) or unreadable: it stops with a ``DataCacheError`` naming the file,
it never silently rebuilds or uses it; ``kdbench prepare-data`` (the data rule) rebuilds.
A job that finds no file builds it (a job run by hand needs no data step).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

from kdbench.data.base import Dataset, FileSplit, Split
from kdbench.errors import KDBenchError
from kdbench.integrity import torch_file_problem
from kdbench.config import layout
from kdbench.io import save_torch, write_json
from kdbench.data import build_dataset
from kdbench.io import load_torch
from kdbench.data.base import DATASETS

FORMAT = 1


def _split_to_dict(split) -> dict:
    kind = "file" if isinstance(split, FileSplit) else "memory"
    return {"kind": kind, **{f.name: getattr(split, f.name) for f in dataclasses.fields(split)}}


def _split_from_dict(d: dict):
    d = dict(d)
    cls = FileSplit if d.pop("kind") == "file" else Split
    return cls(**d)


def dataset_to_dict(ds: Dataset) -> dict:
    out = {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}
    out["splits"] = {k: _split_to_dict(v) for k, v in ds.splits.items()}
    out["mean"], out["std"] = list(ds.mean), list(ds.std)
    # options / metadata are stored as JSON text: weights_only loading stays simple
    for key in ("options", "augment", "meta"):
        if key in out:
            out[key] = json.dumps(_plain(out[key]), sort_keys=True)
    return {"format": FORMAT, "dataset": out}


def dataset_from_dict(blob: dict) -> Dataset:
    d = dict(blob["dataset"])
    d["splits"] = {k: _split_from_dict(v) for k, v in d["splits"].items()}
    for key in ("options", "augment", "meta"):
        if key in d and isinstance(d[key], str):
            d[key] = _restore(json.loads(d[key]))
    names = {f.name for f in dataclasses.fields(Dataset)}
    return Dataset(**{k: v for k, v in d.items() if k in names})


def _plain(x):
    import torch

    if isinstance(x, torch.Tensor):
        return {"__tensor__": x.tolist(), "dtype": str(x.dtype).replace("torch.", "")}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _restore(x):
    import torch

    if isinstance(x, dict):
        if "__tensor__" in x:
            return torch.tensor(x["__tensor__"], dtype=getattr(torch, x["dtype"]))
        return {k: _restore(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v) for v in x]
    return x


class DataCacheError(KDBenchError):
    """A prepared data file that a job must not use: unreadable, or built with other
    options. ``path`` and ``dataset`` let the command line say how to rebuild it."""

    def __init__(self, path: Path, dataset: str, problem: str):
        self.path, self.dataset = Path(path), dataset
        super().__init__(f"prepared data {self.path} {problem}")


def file_sha256(path: os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_prepared(path: os.PathLike) -> Optional[str]:
    """None when ``path`` (a prepared data.pt) is whole, else what is wrong with it: its
    size and SHA-256 against those ``meta.json`` recorded (files written before they were
    recorded: the zip archive's directory must be readable, which catches truncation)."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    try:
        meta = json.loads(path.with_name("meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    size = path.stat().st_size
    if "data_bytes" in meta:
        if size != meta["data_bytes"]:
            return f"has {size} bytes, meta.json recorded {meta['data_bytes']} (truncated or overwritten)"
        if file_sha256(path) != meta.get("data_sha256"):
            return "does not match the SHA-256 meta.json recorded (corrupt)"
        return None
    return torch_file_problem(path)


prepared_path = layout.prepared_data  # the historical name


def save_dataset(ds: Dataset, path: os.PathLike) -> Path:
    path = Path(path)
    save_torch(dataset_to_dict(ds), path)
    write_json({"data_bytes": path.stat().st_size, "data_sha256": file_sha256(path), "name": ds.name, "fingerprint": ds.fingerprint, "options": _plain(ds.options),
                "num_classes": ds.num_classes, "class_names": ds.class_names,
                "splits": {k: len(v) for k, v in ds.splits.items()},
                "has_masks": ds.has_masks, "hierarchy": ds.hierarchy}, path.with_name("meta.json"))
    return path


def load_dataset(name: str, options: Optional[dict] = None, results_dir: Optional[os.PathLike] = None,
                 rebuild: bool = False) -> Dataset:
    """The dataset ``name`` with ``options``: from the prepared file when it exists, else
    built now (and stored when ``results_dir`` is set). A prepared file that is unreadable
    or was built with other options raises :class:`DataCacheError`, unless ``rebuild``
    (``kdbench prepare-data``): then it is rebuilt (atomically)."""
    options = dict(options or {})
    path = prepared_path(results_dir, name) if results_dir is not None else None
    if path is not None and path.is_file():
        try:
            ds = dataset_from_dict(load_torch(path))
        except Exception as err:  # truncated, corrupt, not a torch file
            problem = f"is unreadable (truncated or corrupt: {type(err).__name__}: {str(err).splitlines()[0][:200]})"
            if not rebuild:
                raise DataCacheError(path, name, problem) from None
            print(f"[kdbench] {path} {problem}: rebuilding it", file=sys.stderr, flush=True)
        else:
            version = getattr(DATASETS.get(name), "generator_version", None)  # a builder's own version, if any
            same_version = (ds.meta or {}).get("generator_version") == version
            if _plain(ds.options) == _plain(options) and same_version:
                return ds
            if not same_version:  # stale output of an older generator (not another profile): rebuilt
                print(f"[kdbench] {path} was made by another version of the {name!r} generator: rebuilding it",
                      file=sys.stderr, flush=True)
            elif not rebuild:
                stored, wanted = _plain(ds.options), _plain(options)
                diff = ", ".join(f"{k}={stored.get(k)!r} in the file vs {wanted.get(k)!r} here"
                                 for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))
                raise DataCacheError(path, name, f"was built with other dataset options ({diff}): another profile "
                                                 f"with the same results_dir?")
    ds = build_dataset(name, **options)
    ds.options = dict(options)
    if path is not None:
        save_dataset(ds, path)
    return ds
