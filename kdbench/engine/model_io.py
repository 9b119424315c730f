"""Model files: a run's ``model.pt`` written and read back.

A ``model.pt`` holds the distiller's trainable state (``Distiller.trainable_state``) and
its metadata (arch, method, class count, dataset, seed, teacher, hyperparameters, epochs,
config hash, plus what the writer adds, e.g. ``input_size``). Teachers are read back as
plain networks (:func:`load_model`), students as their deployed model
(:func:`load_deployed`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from kdbench import io as kio
from kdbench.config import RunConfig
from kdbench.errors import KDBenchError
from kdbench.methods import get_method
from kdbench.models import create_model


def save_model(path: Path, distiller, cfg: RunConfig, num_classes: int, extra: Optional[dict] = None) -> None:
    meta = {"arch": cfg.arch, "method": cfg.method, "num_classes": num_classes, "dataset": cfg.dataset,
            "seed": cfg.seed, "teacher": cfg.teacher, "hparams": cfg.hparams, "epochs": cfg.recipe["epochs"],
            "config_hash": cfg.config_hash, **(extra or {})}
    kio.save_torch({"state_dict": distiller.trainable_state(), "meta": meta}, path)


def model_config_hash(path: Path) -> Optional[str]:
    """The config hash a ``model.pt`` was trained with (None if unreadable)."""
    try:
        return kio.load_torch(path)["meta"].get("config_hash")
    except Exception:
        return None


def load_model(path: Path, device="cpu"):
    """The plain network (the ``student.*`` part) of a ``model.pt``, in eval mode, and its
    metadata. Teachers are loaded this way."""
    blob = kio.load_torch(path, map_location=device)
    meta = blob["meta"]
    model = create_model(meta["arch"], meta["num_classes"])
    state = {k[len("student."):]: v for k, v in blob["state_dict"].items() if k.startswith("student.")}
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def build_distiller(cfg: RunConfig, num_classes: int, input_size: int, teacher=None):
    """A fresh distiller of ``cfg.method`` around a new ``cfg.arch`` student."""
    student = create_model(cfg.arch, num_classes)
    return get_method(cfg.method)(student, teacher, num_classes, cfg.hparams,
                                  epochs=cfg.recipe["epochs"], input_size=input_size)


def load_deployed(path: Path, teacher=None, device="cpu"):
    """The deployed model of a run (``Distiller.predict``), e.g. CID's intervention head
    with its stored prototypes. Parts only used in training may be absent."""
    blob = kio.load_torch(path, map_location=device)
    meta = blob["meta"]
    cls = get_method(meta["method"])
    student = create_model(meta["arch"], meta["num_classes"])
    if cls.needs_teacher and teacher is None:
        raise KDBenchError(f"loading a {meta['method']!r} model needs its teacher")
    d = cls(student, teacher if cls.needs_teacher else None, meta["num_classes"], meta["hparams"],
            epochs=meta["epochs"], input_size=meta.get("input_size", 32))
    d.load_state_dict(blob["state_dict"], strict=False)
    return d.to(device).eval(), meta
