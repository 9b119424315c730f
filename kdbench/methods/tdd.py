"""tdd — Tree-like Decision Distillation (Song et al., CVPR 2021; reference:
zju-vipa/KamalEngine, examples/distillation/tdd + kamal/distillation/TDD).

The teacher decides coarse-to-fine: early stages already separate groups of classes,
later stages the classes themselves. TDD reads that "decision tree" off the teacher once
and asks the student to take the same intermediate decisions.

1. The frozen teacher (eval, no augmentation) runs over the dataset's **full** training
   split (never the students' few-shot split); every stage's *tap*
   (``teacher_features: tap``: :meth:`StagedNet.forward_taps`, an early block's
   pre-activation output, the reference's ``layer*.2.bn2`` for resnet56; ``stage``: the
   stage output) is global-average-pooled to one vector per image (:func:`stage_features`).
2. Per stage (:func:`derive_partition`): Ward agglomerative clustering (scipy) of the K
   class means gives a binary tree. A node's mean is the mean of its two children's
   means; its purity is the fraction of the ``purity_k`` training images nearest to that
   mean (squared L2, same stage features) whose label lies in the node. A depth-first walk
   from the root (left child first) makes a leaf, or a node whose purity is below τ, one
   super-class and descends into the children of every other node (KamalEngine
   ``merge_tree``). τ = ``purity_threshold``: ``auto`` = 2/K (the reference's 0.2 at
   K = 10), or a number (:func:`resolve_purity_threshold`). One partition per teacher
   stage, the last included. Note what the rule does: a node whose classes are separated
   from the rest has a pure neighbourhood and is split further, so a representation with
   clean clusters yields singletons at every stage, whatever its tree looks like (the
   tree itself is recorded too: ``trees`` in the cache).
   :func:`cached_teacher_tree` is the whole derivation for a teacher file, cached beside
   it (``hierarchy.json``); training (``prepare``) and the evaluation
   (``decision_consistency``, ``walk_partition_ari``) read the same file.
3. The student gets, for each teacher stage l, an auxiliary head h_l (GAP + linear to
   |P_l| super-classes) on the student stage at the same relative depth
   (``stage_pairs(n_t, n_s)``; with equal stage counts: the same stage), on every stage
   as the reference (its layer1..layer3 heads).
   L_tree = Σ_l CE_w(h_l(F_s), π_l(y)), super-class j weighted 1/|j| (its number of
   classes) — ``F.cross_entropy(weight=...)``, i.e. the weighted mean
   Σ_i w_{π(y_i)} CE_i / Σ_i w_{π(y_i)}.
4. Loss: ce_weight·CE + kd_weight·kd_loss(T) + tree_weight·L_tree (the kd part is
   :meth:`KD.logit_terms`). Deployed model: the plain student.

State: the partitions live in the ``tree_maps`` buffer (class -> super-class, one row per
teacher stage) next to a ``prepared`` flag, so they round-trip through checkpoints and
model files. Loading a state whose ``prepared`` flag is set re-creates the auxiliary
heads from the stored maps before their weights are loaded (a load_state_dict pre-hook),
so a fresh TDD can load a checkpoint without re-running ``prepare``; ``prepare`` itself
does nothing when the loaded state says it already ran.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import io as kio
from kdbench.data.loader import make_loader
from kdbench.errors import KDBenchError
from kdbench.methods.adapters import stage_pairs
from kdbench.methods.base import TrainContext, register_method
from kdbench.methods.kd import KD

Partition = List[List[int]]


# --------------------------------------------------------------------------- derivation
#: where the teacher's per-stage vectors come from (hyperparameter ``teacher_features``)
FEATURE_SOURCES = ("tap", "stage")


@torch.no_grad()
def stage_features(teacher: nn.Module, batches: Iterable[dict], num_images: int,
                   stages: Optional[Sequence[int]] = None, features: str = "tap"
                   ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """GAP'd per-stage features of ``teacher`` for every image of ``batches`` (loader dicts
    with ``image``, ``label``, ``index``), placed by ``index``: a list (one per stage,
    default every stage) of float32 CPU tensors N×C_l, and the int64 labels (N,).
    ``features``: ``tap`` (:meth:`StagedNet.forward_taps`, an early pre-activation block
    output per stage, as the reference) or ``stage`` (the stage outputs). The teacher is
    put in eval mode (and restored)."""
    if features not in FEATURE_SOURCES:
        raise KDBenchError(f"tdd: teacher_features {features!r} is not one of {list(FEATURE_SOURCES)}")
    was = teacher.training
    teacher.eval()
    n_stages = teacher.num_stages
    stages = list(range(n_stages)) if stages is None else list(stages)
    feats: List[Optional[torch.Tensor]] = [None] * len(stages)
    labels = torch.full((num_images,), -1, dtype=torch.long)
    try:
        for batch in batches:
            idx = batch["index"].long().cpu()
            if features == "tap":
                outs = teacher.forward_taps(batch["image"]).extra["taps"]
            else:
                outs = teacher.forward_features(batch["image"]).stages
            for slot, s in enumerate(stages):
                pooled = outs[s].float().mean(dim=(2, 3)).cpu()
                if feats[slot] is None:
                    feats[slot] = torch.zeros(num_images, pooled.shape[1], dtype=torch.float32)
                feats[slot][idx] = pooled
            labels[idx] = batch["label"].long().cpu()
    finally:
        teacher.train(was)
    if (labels < 0).any():
        raise KDBenchError(f"the loader gave {int((labels >= 0).sum())} of {num_images} images")
    return [f for f in feats], labels


def resolve_purity_threshold(value, num_classes: int) -> float:
    """τ as a number: ``auto`` is 2/K, the kNN purity a two-class node has by chance
    (KamalEngine's 0.2 at K = 10); a number in [0, 1] is used as it is."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return 2.0 / int(num_classes)
        try:
            value = float(value)
        except ValueError:
            raise KDBenchError(f"tdd: purity_threshold {value!r} is neither 'auto' nor a number in [0, 1]") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise KDBenchError(f"tdd: purity_threshold {value!r} is neither 'auto' nor a number in [0, 1]")
    return float(value)


def _sq_distances(features: torch.Tensor, center: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Squared L2 distances (float64) of every row of ``features`` to ``center``."""
    out = torch.empty(features.shape[0], dtype=torch.float64)
    for s in range(0, features.shape[0], chunk):
        out[s:s + chunk] = (features[s:s + chunk].double() - center).pow(2).sum(dim=1)
    return out


def derive_partition(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     purity_k: int = 20, purity_threshold: float = 0.25, tree: Optional[dict] = None
                     ) -> Tuple[Partition, List[float]]:
    """One stage's partition of the classes (the module docstring's step 2).

    ``features``: N×d per-image vectors, ``labels``: (N,) class ids in [0, num_classes).
    Returns the super-classes (lists of class ids, in depth-first walk order, each sorted)
    and, per super-class, the purity of its node (for a leaf: of its single class).
    Every class needs at least one image. When ``tree`` is a dict it receives the whole
    Ward tree: ``linkage`` (scipy's (K-1)×4 matrix as lists) and ``nodes`` (every merge
    node in linkage order: its classes and its purity), for diagnostics and
    :func:`kdbench.evaluation.hierarchy.tree_ari`."""
    from scipy.cluster.hierarchy import linkage

    features = torch.as_tensor(features).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu().long()
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError("features must be N×d with one label per row")
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts[:num_classes] == 0).any():
        missing = torch.nonzero(counts[:num_classes] == 0).flatten().tolist()
        raise KDBenchError(f"tdd: classes {missing[:10]} have no training image; cannot build the tree")
    if num_classes == 1:
        if tree is not None:
            tree.update(linkage=[], nodes=[])
        return [[0]], [1.0]
    onehot = F.one_hot(labels, num_classes).double()
    means = (onehot.T @ features.double()) / counts.double()[:, None]  # K×d, float64

    z = linkage(means.numpy(), method="ward")  # (K-1)×4: node K+i joins z[i, 0], z[i, 1]
    children: Dict[int, Tuple[int, int]] = {num_classes + i: (int(a), int(b)) for i, (a, b) in
                                            enumerate(z[:, :2].astype(np.int64))}
    node_mean: Dict[int, torch.Tensor] = {k: means[k] for k in range(num_classes)}
    node_classes: Dict[int, List[int]] = {k: [k] for k in range(num_classes)}
    for node in sorted(children):  # scipy numbers a node after both of its children
        a, b = children[node]
        node_mean[node] = (node_mean[a] + node_mean[b]) / 2.0
        node_classes[node] = sorted(node_classes[a] + node_classes[b])

    k = min(int(purity_k), features.shape[0])

    def purity(node: int) -> float:
        d = _sq_distances(features, node_mean[node])
        nearest = torch.sort(d, stable=True).indices[:k]  # ties: the lower row first
        inside = torch.zeros(num_classes, dtype=torch.bool)
        inside[node_classes[node]] = True
        return float(inside[labels[nearest]].double().mean())

    if tree is not None:
        tree["linkage"] = [[int(a), int(b), float(dist), int(n)] for a, b, dist, n in z.tolist()]
        tree["nodes"] = [{"classes": node_classes[n], "purity": round(purity(n), 6)} for n in sorted(children)]
    root = num_classes + len(children) - 1
    partition: Partition = []
    purities: List[float] = []
    stack = [root]
    while stack:
        node = stack.pop()
        p = purity(node)
        if node < num_classes:  # a leaf: one class
            partition.append([node])
            purities.append(p)
        elif p < purity_threshold:
            partition.append(list(node_classes[node]))
            purities.append(p)
        else:
            a, b = children[node]
            stack += [b, a]  # visit a (the left child) first
    return partition, purities


def partitions_from_features(features: Sequence[torch.Tensor], labels: torch.Tensor, num_classes: int,
                             purity_k: int = 20, purity_threshold="auto", trees: Optional[list] = None
                             ) -> Tuple[List[Partition], List[List[float]]]:
    """:func:`derive_partition` for every stage's features (``trees``: a list that gets
    each stage's Ward tree, see ``derive_partition(tree=)``)."""
    tau = resolve_purity_threshold(purity_threshold, num_classes)
    parts, purities = [], []
    for f in features:
        t = {} if trees is not None else None
        p, q = derive_partition(f, labels, num_classes, purity_k, tau, tree=t)
        if trees is not None:
            trees.append(t)
        parts.append(p)
        purities.append(q)
    return parts, purities


def teacher_partitions(teacher: nn.Module, dataset, split="train", *, purity_k: int = 20,
                       purity_threshold="auto", features: str = "tap", batch_size: int = 256,
                       device=None, return_purity: bool = False, trees: Optional[list] = None):
    """The teacher's per-stage partitions (every stage, coarse to fine), derived on
    ``split`` (a name in ``dataset.splits`` or a split object; default the full training
    split) without augmentation. Each partition is a list of super-classes (lists of class
    ids). With ``return_purity=True`` also the per-super-class node purities."""
    split_obj = dataset.splits[split] if isinstance(split, str) else split
    if device is None:
        device = next(teacher.parameters()).device
    tau = resolve_purity_threshold(purity_threshold, dataset.num_classes)
    loader = make_loader(dataset, split, batch_size, train=False, device=device)
    feats, labels = stage_features(teacher, loader, len(split_obj), features=features)
    parts, purities = partitions_from_features(feats, labels, dataset.num_classes, purity_k, tau, trees=trees)
    return (parts, purities) if return_purity else parts


#: the teacher's tree, cached beside its model file (``results/teachers/<d>/<arch>/s<seed>/``)
HIERARCHY_FILE = "hierarchy.json"
#: bump when the derivation changes, so that every cached tree is derived again
DERIVATION_VERSION = 2


def tree_settings(hparams: dict, num_classes: int) -> Dict[str, Any]:
    """The hyperparameters the tree depends on (:data:`TREE_KEYS`, all required), resolved
    (τ as a number). The caller resolves them from the params file (kdbench.hparams)."""
    missing = [k for k in TREE_KEYS if k not in (hparams or {})]
    if missing:
        raise KeyError(f"tdd tree settings need {', '.join(missing)} (the method's hyperparameters, "
                       f"kdbench.hparams.method_hparams('tdd', ...))")
    return {"purity_k": int(hparams["purity_k"]),
            "purity_threshold": resolve_purity_threshold(hparams["purity_threshold"], num_classes),
            "teacher_features": str(hparams["teacher_features"])}


#: the tdd hyperparameters that decide the teacher's tree
TREE_KEYS = ("purity_k", "purity_threshold", "teacher_features")


def cached_teacher_tree(teacher: nn.Module, teacher_path, dataset, *, hparams: Optional[dict] = None,
                        device=None, batch_size: int = 256) -> Dict[str, Any]:
    """The teacher's tree, derived once on the dataset's **full** training split and
    cached beside the teacher's model file (``<teacher dir>/hierarchy.json``): training
    (TDD's ``prepare``) and evaluation (``decision_consistency``, ``walk_partition_ari``) both
    read it, so both use the same partitions. Works for any teacher file (trained here or
    placed there by hand): the cache is keyed by the file's hash, the dataset fingerprint,
    the tree hyperparameters (``purity_k``, τ resolved, ``teacher_features``) and
    :data:`DERIVATION_VERSION`; another key means "derive again". Written atomically; the
    derivation is deterministic, so jobs that race write the same content. Where the
    directory is read-only the tree is derived and returned without caching.

    Returns ``{"key", "partitions", "purities", "num_superclasses", "trees", "class_names"}``
    (``trees``: each stage's whole Ward tree, see :func:`derive_partition`)."""
    teacher_path = Path(teacher_path)
    settings = tree_settings(hparams, dataset.num_classes)
    train = dataset.splits["train"]
    key = {"teacher_sha": kio.file_sha(teacher_path), "dataset": dataset.name,
           "dataset_fingerprint": dataset.fingerprint, "split": "train", "n_images": int(len(train)),
           **settings, "version": DERIVATION_VERSION}
    def derive() -> dict:
        trees: List[dict] = []
        parts, purities = teacher_partitions(
            teacher, dataset, "train", purity_k=settings["purity_k"], purity_threshold=settings["purity_threshold"],
            features=settings["teacher_features"], batch_size=batch_size, device=device, return_purity=True,
            trees=trees)
        return {"partitions": [[sorted(int(c) for c in g) for g in p] for p in parts],
                "purities": [[round(float(q), 6) for q in row] for row in purities],
                "num_superclasses": [len(p) for p in parts], "trees": trees,
                "class_names": list(getattr(dataset, "class_names", None) or [])}

    # a read-only teacher dir (an imported teacher's): the tree is used uncached
    return kio.cached_json(teacher_path.parent / HIERARCHY_FILE, key, derive, read_only_ok=True)


def partition_to_map(partition: Partition, num_classes: int) -> torch.Tensor:
    """class -> super-class index (int64, K); every class exactly once."""
    out = torch.full((num_classes,), -1, dtype=torch.long)
    for j, members in enumerate(partition):
        for c in members:
            if out[int(c)] >= 0:
                raise ValueError(f"class {c} is in two super-classes")
            out[int(c)] = j
    if (out < 0).any():
        raise ValueError(f"partition does not cover classes {torch.nonzero(out < 0).flatten().tolist()[:10]}")
    return out


def map_to_partition(mapping: torch.Tensor) -> Partition:
    """Inverse of :func:`partition_to_map`."""
    mapping = mapping.detach().cpu().long()
    return [torch.nonzero(mapping == j).flatten().tolist() for j in range(int(mapping.max()) + 1)]


def superclass_weights(mapping: torch.Tensor) -> torch.Tensor:
    """1/|j| for every super-class j of a class -> super-class map."""
    sizes = torch.bincount(mapping, minlength=int(mapping.max()) + 1)
    return 1.0 / sizes.to(torch.get_default_dtype())


# --------------------------------------------------------------------------- the method
@register_method("tdd")
class TDD(KD):
    hparam_names = KD.hparam_names + ("tree_weight", "purity_threshold", "purity_k", "teacher_features")

    @classmethod
    def check_hparams(cls, hparams: dict) -> None:
        """The declared names, then τ's form (``auto`` or a number in [0, 1]) and
        ``teacher_features`` (one of :data:`FEATURE_SOURCES`), before any work starts."""
        super().check_hparams(hparams)
        resolve_purity_threshold(hparams["purity_threshold"], 2)
        if hparams["teacher_features"] not in FEATURE_SOURCES:
            raise KDBenchError(f"tdd: teacher_features {hparams['teacher_features']!r} is not one of "
                               f"{list(FEATURE_SOURCES)}")

    def __init__(self, student, teacher, num_classes, hparams, **kw):
        super().__init__(student, teacher, num_classes, hparams, **kw)
        n_t, n_s = teacher.num_stages, student.num_stages
        #: teacher stages with a partition (all, the last included, as the reference), and the
        #: student stage each one's head sits on
        self.tree_stages = list(range(n_t))
        self.head_stages = [s for _, s in stage_pairs(n_t, n_s)]
        self.register_buffer("tree_maps", torch.full((n_t, num_classes), -1, dtype=torch.long))
        #: node purity of every super-class (row l, column j), NaN beyond |P_l|: for artifacts
        self.register_buffer("tree_purity", torch.full((n_t, num_classes), math.nan, dtype=torch.float64))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))
        self.tree_heads = nn.ModuleList()
        self.class_names: Optional[List[str]] = None
        self.register_load_state_dict_pre_hook(TDD._restore_heads)

    # -- partitions -------------------------------------------------------------------
    @property
    def partitions(self) -> List[Partition]:
        if not bool(self.prepared):
            return []
        return [map_to_partition(m) for m in self.tree_maps]

    def set_partitions(self, partitions: Sequence[Partition],
                       purities: Optional[Sequence[Sequence[float]]] = None) -> None:
        """Install partitions (one per teacher stage 0..n_t-1, optionally with their
        super-classes' purities) and build the heads."""
        if len(partitions) != len(self.tree_stages):
            raise KDBenchError(f"tdd: expected {len(self.tree_stages)} partitions, got {len(partitions)}")
        maps = torch.stack([partition_to_map(p, self.num_classes) for p in partitions])
        self.tree_maps.copy_(maps.to(self.tree_maps.device))
        self.tree_purity.fill_(math.nan)
        for slot, row in enumerate(purities or []):
            self.tree_purity[slot, :len(row)] = torch.tensor(list(row), dtype=torch.float64)
        self._build_heads([len(p) for p in partitions])
        self.prepared.fill_(True)

    def _build_heads(self, sizes: Sequence[int]) -> None:
        channels = self.student.stage_channels
        device = next(self.student.parameters()).device
        self.tree_heads = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[s], n))
            for s, n in zip(self.head_stages, sizes)]).to(device)

    @staticmethod
    def _restore_heads(module, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: (re)build the heads the stored partitions need."""
        maps = state_dict.get(prefix + "tree_maps")
        flag = state_dict.get(prefix + "prepared")
        if maps is None or flag is None or not bool(flag):
            return
        sizes = [int(m.max()) + 1 for m in maps]
        if bool(module.prepared) and len(module.tree_heads):
            if torch.equal(module.tree_maps.cpu(), maps.cpu()):
                return
            raise KDBenchError("tdd: the state's partitions differ from the ones prepare() derived "
                               "(is it from another teacher or training split?)")
        module._build_heads(sizes)

    # -- hooks ------------------------------------------------------------------------
    def prepare(self, ctx: TrainContext) -> None:
        """The teacher's tree, from the dataset's **full** training split (never the
        students' few-shot split): read from (or written to) the cache beside the teacher
        file when the context names it (``ctx.info["teacher_path"]``), the same tree the
        evaluation reads; derived uncached otherwise."""
        names = getattr(ctx.dataset, "class_names", None)
        self.class_names = list(names) if names is not None else None
        if bool(self.prepared):  # restored from a checkpoint: nothing to derive
            return
        teacher_path = (ctx.info or {}).get("teacher_path")
        if teacher_path is not None and Path(teacher_path).is_file():
            tree = cached_teacher_tree(self.teacher, teacher_path, ctx.dataset, hparams=self.hparams,
                                       device=ctx.device, batch_size=ctx.batch_size)
            parts, purities = tree["partitions"], tree["purities"]
        else:
            s = tree_settings(self.hparams, self.num_classes)
            full = ctx.dataset.splits["train"]
            loader = ctx.make_loader(full, ctx.batch_size, train=False)
            feats, labels = stage_features(self.teacher, loader, len(full), features=s["teacher_features"])
            parts, purities = partitions_from_features(feats, labels, self.num_classes, s["purity_k"],
                                                       s["purity_threshold"])
        self.set_partitions(parts, purities)

    def extra_modules(self):
        return [self.tree_heads]

    def artifacts(self) -> Dict[str, Any]:
        if not bool(self.prepared):
            return {}
        names = self.class_names or [str(k) for k in range(self.num_classes)]
        out = []
        for slot, part in enumerate(self.partitions):
            entry = {"teacher_stage": self.tree_stages[slot], "student_stage": self.head_stages[slot],
                     "num_superclasses": len(part), "class_ids": part,
                     "superclasses": [[names[c] for c in group] for group in part]}
            purity = self.tree_purity[slot, :len(part)].tolist()
            if not any(math.isnan(p) for p in purity):
                entry["purity"] = [round(p, 6) for p in purity]
            out.append(entry)
        s = tree_settings(self.hparams, self.num_classes)
        return {"partitions": out, "purity_k": s["purity_k"], "purity_threshold": s["purity_threshold"],
                "purity_threshold_setting": self.hparams["purity_threshold"],
                "teacher_features": s["teacher_features"]}

    # -- loss ---------------------------------------------------------------------------
    def tree_loss(self, stage_outputs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """L_tree = Σ_l CE_w(h_l(F_s), π_l(y)), weights 1/|j| (unweighted by tree_weight)."""
        total = 0.0
        for slot, head in enumerate(self.tree_heads):
            mapping = self.tree_maps[slot]
            logits = head(stage_outputs[self.head_stages[slot]])
            weight = superclass_weights(mapping).to(logits.dtype)
            total = total + F.cross_entropy(logits, mapping[labels], weight=weight)
        return total

    def loss(self, batch):
        if not bool(self.prepared):
            raise KDBenchError("tdd: prepare(ctx) must run before training (it derives the teacher's tree)")
        x, y = batch["image"], batch["label"]
        fs = self.student.forward_features(x)
        terms = self.logit_terms(fs.logits, self.teacher_logits(batch), y)
        terms["tree"] = self.hparams["tree_weight"] * self.tree_loss(fs.stages, y)
        return terms
