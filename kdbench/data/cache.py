"""Prepared datasets on disk: ``results/data/{dataset}/data.pt``.

The data rule builds a dataset once and stores its tensors; every job then loads them in
a fraction of a second instead of regenerating them. The file records the options it was
built with; a job whose options differ rebuilds (atomically) instead of using stale data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

from kdbench.data.base import Dataset, FileSplit, Split

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


def prepared_path(results_dir: os.PathLike, name: str) -> Path:
    return Path(results_dir) / "data" / name / "data.pt"


def save_dataset(ds: Dataset, path: os.PathLike) -> Path:
    from kdbench.engine.io import save_torch, write_json

    path = Path(path)
    save_torch(dataset_to_dict(ds), path)
    write_json({"name": ds.name, "fingerprint": ds.fingerprint, "options": _plain(ds.options),
                "num_classes": ds.num_classes, "class_names": ds.class_names,
                "splits": {k: len(v) for k, v in ds.splits.items()},
                "has_masks": ds.has_masks, "hierarchy": ds.hierarchy}, path.with_name("meta.json"))
    return path


def load_dataset(name: str, options: Optional[dict] = None, results_dir: Optional[os.PathLike] = None) -> Dataset:
    """The dataset ``name`` with ``options``: from the prepared file when it exists and was
    built with the same options, else built now (and stored when ``results_dir`` is set)."""
    from kdbench.data import build_dataset
    from kdbench.engine.io import load_torch

    options = dict(options or {})
    path = prepared_path(results_dir, name) if results_dir is not None else None
    if path is not None and path.is_file():
        from kdbench.data.base import DATASETS

        ds = dataset_from_dict(load_torch(path))
        version = getattr(DATASETS.get(name), "generator_version", None)  # a builder's own version, if any
        if _plain(ds.options) == _plain(options) and (ds.meta or {}).get("generator_version") == version:
            return ds
    ds = build_dataset(name, **options)
    ds.options = dict(options)
    if path is not None:
        save_dataset(ds, path)
    return ds
