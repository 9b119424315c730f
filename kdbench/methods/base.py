"""The Distiller contract (mdistiller style: one forward, a dict of named losses).

A method is a :class:`Distiller` subclass registered by name::

    @register_method("kd")
    class KD(Distiller):
        hparam_names = ("ce_weight", "kd_weight", "temperature")
        def loss(self, batch):
            ...
            return {"ce": ..., "kd": ...}

Hyperparameters come from ``params/methods/<name>.yaml`` (kdbench's own methods) and are
validated against ``hparam_names``: a missing or unknown key is an error before training.
Third-party packages register methods through the ``kdbench.methods`` entry-point group
(the entry point names a module, or a Distiller subclass, that registers on import); such
a method may carry ``default_hparams`` used when no params file exists for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.registry import Registry

METHODS: Registry[type] = Registry("method")

#: the length of the training recipe the specs' warm-up and ramp epochs refer to
REFERENCE_EPOCHS = 240


def register_method(name: str):
    def add(cls):
        if not callable(getattr(cls, "loss", None)):
            raise TypeError(f"method {name!r}: {cls.__name__} must define loss(batch) -> dict of named terms")
        cls.name = name
        return METHODS.register(name, cls)

    return add


def register_variant(name: str, base: type, doc: str) -> type:
    """Register ``base`` under a second name (e.g. ``kd_ls``: kd with its
    ``logit_stand`` option on) without copying it: an empty subclass whose only
    difference is the name, hence its own ``params/methods/<name>.yaml`` and board row."""
    cls = type(f"{base.__name__}_{name}", (base,), {"__doc__": doc, "__module__": base.__module__})
    return register_method(name)(cls)


@dataclass
class TrainContext:
    """What ``Distiller.prepare`` gets: the (possibly few-shot) training split, the
    dataset it belongs to, a loader factory and the device."""

    dataset: Any
    train_split: Any
    device: torch.device
    batch_size: int
    seed: int
    make_loader: Any  # callable(split, batch_size, train=bool, aligned=None, **loader_options) -> loader
    info: Dict[str, Any] = field(default_factory=dict)


class PairError(KDBenchError, ValueError):
    """A method cannot run on a teacher/student pair: says method, pair and reason."""

    def __init__(self, method: str, teacher: str, student: str, reason: str):
        super().__init__(f"method {method!r} cannot run on pair {teacher}->{student}: {reason} "
                         f"(a profile may list it in this pair's exclude_methods)")


class Distiller(nn.Module):
    """Base class of every method.

    ``loss(batch)`` returns a dict of named, already-weighted loss terms; the total is
    their sum. ``batch`` is the loader's dict (``image``, ``label``, ``index``, optional
    ``mask`` and aligned per-pixel tensors). The teacher (if any) is frozen and kept in
    eval mode whatever ``train()`` is called with.
    """

    name: str = "?"
    #: hyperparameter keys this method takes (all required)
    hparam_names: tuple = ()
    #: optional hyperparameters and their defaults (e.g. kd's ``logit_stand: False``): a
    #: params file may leave them out, so adding an option that is off by default does
    #: not change the hyperparameters (and config hashes) of existing runs
    optional_hparams: Dict[str, Any] = {}
    #: for third-party methods without a params file
    default_hparams: Optional[dict] = None
    #: False for methods that train the student alone (vanilla, teachers)
    needs_teacher: bool = True

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], num_classes: int,
                 hparams: dict, *, epochs: int = REFERENCE_EPOCHS, input_size: int = 32):
        super().__init__()
        self.check_hparams(hparams)
        if self.needs_teacher and teacher is None:
            raise KDBenchError(f"method {self.name!r} needs a teacher")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.num_classes = num_classes
        self.hparams = {**self.optional_hparams, **hparams}
        self.epochs = int(epochs)
        self.input_size = int(input_size)
        self.epoch = 0

    # -- hyperparameters ---------------------------------------------------------------
    @classmethod
    def check_hparams(cls, hparams: dict) -> None:
        names = set(cls.hparam_names) | set(cls.optional_hparams)
        for key in hparams:
            if key not in names:
                raise UnknownChoiceError(f"hyperparameter of method {cls.name!r}", key, names)
        missing = sorted(set(cls.hparam_names) - set(hparams))
        if missing:
            raise KDBenchError(f"method {cls.name!r} is missing hyperparameters {missing} "
                               f"(set them in params/methods/{cls.name}.yaml)")

    @classmethod
    def check_pair(cls, teacher: nn.Module, student: nn.Module, hparams: dict) -> None:
        """Reject, before any job runs, a teacher/student pair this method cannot run.

        ``teacher`` and ``student`` are the StagedNets of the pair (built on the ``meta``
        device by validation: shapes and ``stage_channels`` are real, values are not;
        ``teacher`` is None for methods that need none). Raise :class:`PairError`
        naming the method, the pair and the reason. The default accepts every pair."""

    def scaled_epochs(self, reference: float) -> float:
        """An epoch count given for the 240-epoch recipe, scaled to this run's length."""
        return float(reference) * self.epochs / REFERENCE_EPOCHS

    # -- hooks -------------------------------------------------------------------------
    def prepare(self, ctx: TrainContext) -> None:
        """Called once before training, before the optimizer is built (so modules it
        creates are trained) and before a checkpoint is loaded (so a resumed run first
        re-creates what ``prepare`` makes, then loads its trained state). It must be
        deterministic given the teacher and the data: e.g. TDD's hierarchy, e2kd_frozen's
        stored maps."""

    def aligned_tensors(self) -> Dict[str, torch.Tensor]:
        """Per-image tensors (N×H×W, rows = training-split rows) the training loader
        carries through the same crop/flip as their images (``batch[key]``)."""
        return {}

    def loader_options(self) -> Dict[str, Any]:
        """Extra options of the training loader (``make_loader`` keywords), e.g. MLKD's
        ``{"strong_view": True}`` for a second, strongly augmented view of every batch
        (``batch["image_strong"]``). The default (none) leaves batches as they are."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def sync_state(self, world) -> None:
        """Data-parallel jobs only (``kdbench.engine.distributed``): called on every rank
        after an epoch's last step, before ``on_epoch_end``, so that state a method builds
        from the batches it saw (each rank saw its shard) becomes the state of the whole
        epoch's data on every rank, e.g. with ``world.all_reduce_sum(...)`` or
        ``world.all_gather_cat(...)``. Trained parameters need nothing here (their
        gradients are averaged every step). Default: nothing to synchronise."""

    def extra_modules(self) -> List[nn.Module]:
        """Modules trained with the student (adapters, heads)."""
        return []

    def param_groups(self, weight_decay: float) -> List[dict]:
        """Optimizer parameter groups: the student and the extra modules, with the
        recipe's weight decay. Methods override to change a group's settings."""
        params = list(self.student.parameters())
        for m in self.extra_modules():
            params += list(m.parameters())
        return [{"params": [p for p in params if p.requires_grad], "weight_decay": weight_decay}]

    def features(self, x: torch.Tensor):
        """Student features (in the graph) and the frozen teacher's (no graph) of a batch."""
        fs = self.student.forward_features(x)
        with torch.no_grad():
            ft = self.teacher.forward_features(x)
        return fs, ft

    def student_teacher_logits(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """The student's logits on the batch's images and the frozen teacher's (no graph):
        where a logit-distillation loss starts."""
        z_s = self.student(batch["image"])
        with torch.no_grad():
            z_t = self.teacher(batch["image"])
        return z_s, z_t

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the deployed model (the plain student unless a method says otherwise)."""
        return self.student(x)

    def artifacts(self) -> Dict[str, Any]:
        """JSON-serialisable things saved beside the run (e.g. TDD's partitions)."""
        return {}

    # -- state ---------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """Everything the run owns (student, extra modules, buffers such as CID's
        prototypes) — the teacher is not part of it."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state(self, state: Dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KDBenchError(f"state does not fit method {self.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")



def iter_method_names() -> Iterable[str]:
    load_plugins()
    return METHODS.names()


_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import every ``kdbench.methods`` entry point once (third-party methods)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="kdbench.methods"):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Distiller) and ep.name not in METHODS:
            register_method(ep.name)(obj)


def get_method(name: str) -> type:
    if name not in METHODS:
        load_plugins()
    return METHODS.get(name)
