"""Dataset containers and the dataset registry."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from kdbench.registry import Registry
from kdbench.errors import DatasetNotFoundError


@dataclass
class Split:
    """One split held in memory: ``images`` uint8 N×C×H×W, ``labels`` int64 N, optional
    ``masks`` bool N×H×W (foreground), optional ``groups`` int64 N (e.g. Waterbirds'
    (y, place) group used for worst-group accuracy)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: Optional[torch.Tensor] = None
    groups: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if self.masks is not None and (self.masks.dtype != torch.bool or self.masks.shape != (n, *self.images.shape[2:])):
            raise ValueError("masks must be bool N×H×W aligned with images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "Split":
        pick = lambda t: None if t is None else t[index]
        return Split(self.images[index], self.labels[index], pick(self.masks), pick(self.groups))


@dataclass
class FileSplit:
    """A split that streams from disk (ImageNet-style folders): paths + labels."""

    paths: List[str]
    labels: torch.Tensor
    groups: Optional[torch.Tensor] = None
    masks: None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> "FileSplit":
        idx = index.tolist()
        return FileSplit([self.paths[i] for i in idx], self.labels[index],
                         None if self.groups is None else self.groups[index])


@dataclass
class Dataset:
    """What ``build_dataset`` returns.

    ``hierarchy``: list of partitions of the class indices, coarse to fine (each a list of
    lists of class ids), or None. ``mean``/``std``: per-channel normalisation in [0, 1]
    units. ``augment``: the training augmentation recipe, e.g. ``{"crop_pad": 4,
    "flip": True}`` for in-memory data or ``{"random_resized_crop": 224, "flip": True}``
    for folders. ``eval_size``: evaluation resize for folder data."""

    name: str
    splits: Dict[str, object]
    num_classes: int
    class_names: List[str]
    fingerprint: str
    hierarchy: Optional[List[List[List[int]]]] = None
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.25, 0.25, 0.25)
    augment: dict = field(default_factory=lambda: {"crop_pad": 4, "flip": True})
    image_size: int = 32
    ood_metric: str = "accuracy"  # or "worst_group"
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Extra per-dataset facts, e.g. ``meta["context"][split]``: int64 per-image background
    context ids (``shapes``, ``digits`` with ``colour_bias``), ``meta["paired_context"]``."""
    source: str = ""
    """Where the images come from, for the board's notes (release, version, checksum)."""

    @property
    def has_masks(self) -> bool:
        return getattr(self.splits.get("test"), "masks", None) is not None

    @property
    def has_ood(self) -> bool:
        return "test_ood" in self.splits


def fingerprint_tensors(*parts) -> str:
    """A content hash (sha256, 16 hex) of tensors / strings / bytes, in order."""
    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"<none>")
        elif isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def channel_stats(images: torch.Tensor):
    """Per-channel (mean, std) of uint8 N×C×H×W images in [0, 1] units, rounded to 4
    digits (std at least 1e-3): a dataset's normalisation, from its training split."""
    x = images.double().div_(255.0)
    mean = tuple(round(float(m), 4) for m in x.mean(dim=(0, 2, 3)))
    std = tuple(round(max(float(s), 1e-3), 4) for s in x.std(dim=(0, 2, 3)))
    return mean, std


def fingerprint_splits(name: str, splits: Dict[str, "Split"], contexts: Optional[dict] = None) -> str:
    """A dataset's content hash: its name, then per split (in order) its name, images,
    labels, masks and per-image context ids (``contexts``, absent ones as None)."""
    parts = [name]
    for split_name, sp in splits.items():
        parts += [split_name, sp.images, sp.labels, sp.masks, (contexts or {}).get(split_name)]
    return fingerprint_tensors(*parts)


def resolve_data_root(data_root=None) -> str:
    """Where paper-scale datasets live: the ``data_root`` option, else the ``KDBENCH_DATA``
    environment variable, else ``./data``."""
    import os

    if data_root:
        return os.path.expanduser(str(data_root))
    return os.path.expanduser(os.environ.get("KDBENCH_DATA") or "data")


def not_found(name: str, searched: str, setting: str, hint: str = ""):
    """A ``DatasetNotFoundError`` naming the path searched and the setting to change, plus
    an optional hint (e.g. how to download)."""
    err = DatasetNotFoundError(name, searched, setting)
    if hint:
        err.args = (f"{err.args[0]}. {hint}",)
    return err


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")

#: dataset name -> f(options) -> the smallest class's number of training images, computed
#: from the options alone (nothing built or read); datasets whose class sizes are only
#: known from their files (folders) have none and are checked when the job starts
TRAIN_CLASS_MIN: Dict[str, Callable[[dict], Optional[int]]] = {}


#: dataset name -> {option: JSON schema of its type and range}: every keyword option of the
#: dataset's builder, declared beside its registration and checked at validation
#: (kdbench.config, before any work), e.g. ``OPTION_TYPES["shapes"] = {"n_train":
#: {"type": "integer", "minimum": 1, "maximum": 100000}, ...}``. A registered dataset that
#: declares none, or leaves an option out, fails tests/test_config.py.
OPTION_TYPES: Dict[str, Dict[str, dict]] = {}
#: the option types the datasets share
SEED_OPTION = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
PATH_OPTION = {"type": ["string", "null"], "minLength": 1}
FRACTION_OPTION = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def min_train_class_count(name: str, options: Optional[dict] = None) -> Optional[int]:
    fn = TRAIN_CLASS_MIN.get(name)
    return None if fn is None else fn(dict(options or {}))
