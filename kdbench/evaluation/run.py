"""``evaluate_run``: every evaluation metric of one student run, in one JSON record, one
step per metric group (accuracy and agreement; the pass over the evaluation subset;
Grad-CAM; FSS / RS / UniCAM; the decision process and the teacher's tree; efficiency; the
figure).

Cost model (kept cheap on purpose): one batched pass of ``forward_features`` per model
(teacher, student, base) over the fixed evaluation subset; Grad-CAM re-enters the head
only (``forward_from``); one pass of the student over a train subset for the probes; the
deployed model over the full test / test_ood splits for accuracy and agreement. What
depends on the teacher alone is computed once per teacher and cached (atomically) in its
run dir: its TDD tree (``hierarchy.json``, shared with TDD's training), its test / test_ood
predictions (``teacher_predictions.json``) and its pass over the evaluation subset — stage outputs,
logits and Grad-CAM maps, which FSS, expl_sim and agreement use (``eval_features.pt``,
keyed by the teacher file, dataset content, subset, batch size, device type and torch
version; loaded with ``weights_only=True``). All of it is on un-augmented images with the
teacher in eval mode, so the cached values are exactly the recomputed ones; nothing that
depends on augmentation is cached.

Conventions:
- The fixed evaluation subset: the first ``evaluation.n_samples`` indices of a
  seed-0 permutation of the test split — the same images for every run of a dataset.
- FSS / RS: ``evaluation.fss_estimator`` (``u_centered`` default, ``v_normalized``,
  ``u_centered_batch5``: see :mod:`kdbench.evaluation.similarity`), recorded as
  ``fss_estimator``; RS per stage (``rs_stages``, ``rs_residual_stages``) and ``rs`` /
  ``rs_residual`` = the last stage. UniCAM maps follow the reference (pooled-embedding
  target, min-max scaled maps: :mod:`kdbench.explain.unicam`).
- Accuracy and agreement use the *deployed* model (``Distiller.predict``; CID's
  intervention head). Grad-CAM, FSS, RS, UniCAM and the probes use the plain student
  network (the StagedNet: the deployed model of every method except CID, whose
  intervention head sits on the same embedding).
- A metric that does not apply is None (JSON null), never 0.
- Deterministic: the same inputs give the same record (every key except the wall time
  ``eval_s``) and the same PNG bytes.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from kdbench.config import layout
from kdbench import io as kio
from kdbench.data.loader import make_loader
from kdbench.engine.model_io import load_deployed, load_model
from kdbench.engine.runtime import set_deterministic
from kdbench.errors import KDBenchError
from kdbench.evaluation import efficiency, explanations, hierarchy, similarity
from kdbench.evaluation.accuracy import accuracy, agreement
from kdbench.evaluation.figures import to_display, write_grid
from kdbench.evaluation.predict import predict_split
from kdbench.explain import gradcam_maps, unicam_maps
from kdbench.hparams import method_hparams
from kdbench.integrity import seal
from kdbench.methods import get_method
from kdbench.methods.tdd import cached_teacher_tree, tree_settings

EVAL_DEFAULTS = {"n_samples": 256, "probe_train_samples": 1024, "figures": True, "figure_images": 8,
                 "fss_estimator": "u_centered"}
#: seed of the permutations that pick the evaluation / probe / partition subsets
SUBSET_SEED = 0
PREDICTIONS_FILE = "teacher_predictions.json"
#: the teacher's TDD tree beside its model (kdbench.methods.tdd.HIERARCHY_FILE)
PARTITIONS_FILE = "hierarchy.json"
#: the teacher's pass over the evaluation subset (stage outputs, logits, Grad-CAM maps)
EVAL_FEATURES_FILE = "eval_features.pt"
#: the teacher's per-stage coarse / fine linear probes (cached_stage_probes)
STAGE_PROBES_FILE = "stage_probes.json"
#: training images the stage probes are fit on (the first of the training split)
PROBE_TRAIN = 2000
#: a student's last evaluation record, kept beside its model with the key it was computed
#: under: an evaluate job that finds the same key reuses it (a method added to a profile
#: re-runs its cell's evaluate job; the cell's other students are not evaluated again)
RECORD_CACHE_FILE = "eval_record.json"
BATCH_SIZE = 256

RECORD_KEYS = (
    "dataset", "dataset_source", "teacher", "student", "method", "seed", "teacher_seed",
    "top1", "top1_sel", "top1_ood", "train_s", "train_img_s", "params",
    "agreement", "agreement_ood", "expl_sim", "epg", "fss", "fss_stages", "fss_estimator",
    "rs", "rs_residual", "rs_stages", "rs_residual_stages",
    "unicam_epg_distilled", "unicam_epg_residual", "decision_consistency", "decision_consistency_stages",
    "walk_partition_ari", "hierarchy_ari_tree", "hierarchy_ari_tree_stages", "tree_purity", "tree_purity_stages",
    "tree_purity_chance_stages", "tree_purity_p95_stages", "probe_coarse_stages", "probe_fine_stages", "flops", "n_eval", "eval_s",
)


def subset_indices(n_total: int, n: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """The first ``n`` indices of a fixed-seed permutation of ``range(n_total)``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(int(n_total), generator=g)[: min(int(n), int(n_total))]


def eval_subset(dataset, n_samples: int):
    """The fixed evaluation subset of the test split (same images for every run)."""
    test = dataset.splits["test"]
    return test.subset(subset_indices(len(test), n_samples))


# --------------------------------------------------------------------------- passes
@torch.no_grad()
def collect(models: Dict[str, Any], dataset, split, device, batch_size: int = BATCH_SIZE,
            pooled_only: bool = False, last_only: Sequence[str] = (), keep_images: int = 0) -> Dict[str, Any]:
    """One batched pass of ``forward_features`` per model over ``split`` (in order):
    ``out[name]`` = {"stages": [N×C×h×w per stage] (or pooled N×C with ``pooled_only``;
    only the last stage for the models named in ``last_only``), "logits": N×K}, plus
    "labels", "masks" (or None), "size" (H, W) and "images": the first ``keep_images``
    normalised images."""
    acc: Dict[str, Dict[str, List]] = {k: {"stages": [], "logits": []} for k in models}
    labels, masks, images = [], [], []
    size = None
    for batch in make_loader(dataset, split, batch_size, train=False, device=device):
        x = batch["image"]
        size = tuple(x.shape[-2:])
        for name, model in models.items():
            f = model.forward_features(x)
            stages = f.stages[-1:] if name in last_only else f.stages
            st = [s.float().mean(dim=(2, 3)) if pooled_only else s.float() for s in stages]
            acc[name]["stages"].append([s.cpu() for s in st])
            acc[name]["logits"].append(f.logits.float().cpu())
        labels.append(batch["label"].cpu())
        m = batch.get("mask")
        masks.append(None if m is None else m.bool().cpu())
        have = sum(len(i) for i in images)
        if have < keep_images:
            images.append(x[: keep_images - have].float().cpu())
    out: Dict[str, Any] = {}
    for name, a in acc.items():
        n_stages = len(a["stages"][0])
        out[name] = {"stages": [torch.cat([b[i] for b in a["stages"]]) for i in range(n_stages)],
                     "logits": torch.cat(a["logits"])}
    out["labels"] = torch.cat(labels)
    out["masks"] = None if any(m is None for m in masks) else torch.cat(masks)
    out["images"] = torch.cat(images) if images else None
    out["size"] = size
    return out


def tree_hparams(tdd_hparams: Optional[dict]) -> dict:
    """tdd's hyperparameters for the teacher's tree: its params file's values
    (kdbench.hparams) with ``tdd_hparams`` (the profile's, where given) over them."""
    return {**method_hparams("tdd", None, "?", None), **(tdd_hparams or {})}


def cached_teacher_partitions(teacher, teacher_dir: Path, dataset, device, *,
                              tdd_hparams: Optional[dict] = None) -> List[List[List[int]]]:
    """The teacher's per-stage TDD partitions: exactly the tree TDD trains with
    (:func:`kdbench.methods.tdd.cached_teacher_tree`: derived once on the full training
    split, cached in ``teacher_dir/hierarchy.json``)."""
    return cached_teacher_tree(teacher, Path(teacher_dir) / layout.MODEL, dataset, hparams=tree_hparams(tdd_hparams),
                               device=device, batch_size=BATCH_SIZE)["partitions"]


def cached_teacher_predictions(teacher, teacher_dir: Path, dataset, device) -> Dict[str, torch.Tensor]:
    """The teacher's top-1 classes on ``test`` (and ``test_ood``), cached in
    ``teacher_dir/teacher_predictions.json`` (keyed by the teacher file's hash and the
    dataset fingerprint): every student of the teacher needs them for ``agreement``."""
    key = {"teacher_sha": kio.file_sha(Path(teacher_dir) / layout.MODEL), "dataset_fingerprint": dataset.fingerprint}
    splits = [s for s in ("test", "test_ood") if s in dataset.splits]

    def compute():
        return {"predictions": {s: predict_split(teacher, dataset, s, device).tolist() for s in splits}}

    blob = kio.cached_json(Path(teacher_dir) / PREDICTIONS_FILE, key, compute)
    return {s: torch.tensor(v, dtype=torch.long) for s, v in blob["predictions"].items()}


def cached_stage_probes(teacher, teacher_dir: Path, dataset, features: str) -> List[dict]:
    """The teacher's per-stage linear probes for the true coarse groups and for the classes
    (:func:`kdbench.evaluation.hierarchy.stage_probe_table` on the features TDD's tree uses,
    fit on ``PROBE_TRAIN`` training images, scored on the test split), cached in
    ``teacher_dir/stage_probes.json`` (keyed by the teacher file and the dataset content)."""
    key = {"teacher_sha": kio.file_sha(Path(teacher_dir) / layout.MODEL), "dataset_fingerprint": dataset.fingerprint,
           "features": features, "n_train": PROBE_TRAIN, "version": 1}

    def compute():  # pooled_features restores the teacher's mode; it runs on the teacher's device
        return {"stages": hierarchy.stage_probe_table(teacher, dataset, n_train=PROBE_TRAIN, features=features)}

    return kio.cached_json(Path(teacher_dir) / STAGE_PROBES_FILE, key, compute, read_only_ok=True)["stages"]


def teacher_tree_record(tree: dict, dataset, teacher, teacher_dir: Path, tdd_hparams) -> Dict[str, Any]:
    """The teacher's tree measured as what it is (docs/metrics.md "TDD's tree"), per teacher stage:
    the Ward tree cut at the true coarse level (``hierarchy_ari_tree``), its dendrogram
    purity of the true coarse groups against a permutation baseline (``tree_purity*``),
    and linear probes for coarse groups vs classes (``probe_*``: coarse decisions early?)."""
    groups, k = dataset.hierarchy[0], dataset.num_classes
    trees = [t.get("linkage") for t in tree.get("trees", [])]
    base = [hierarchy.purity_baseline(z, groups, k) for z in trees]
    source = tree_settings(tree_hparams(tdd_hparams), k)["teacher_features"]  # tdd's "tap" / "stage"
    probes = cached_stage_probes(teacher, teacher_dir, dataset, "taps" if source == "tap" else "stages")
    out = {"hierarchy_ari_tree_stages": [hierarchy.tree_ari(z, dataset.hierarchy, k) for z in trees],
           "tree_purity_stages": [hierarchy.dendrogram_purity(z, groups, k) for z in trees],
           "tree_purity_chance_stages": [None if b is None else b["mean"] for b in base],
           "tree_purity_p95_stages": [None if b is None else b["p95"] for b in base],
           "probe_coarse_stages": [r["coarse"] for r in probes], "probe_fine_stages": [r["fine"] for r in probes]}
    out["hierarchy_ari_tree"] = _max(out["hierarchy_ari_tree_stages"])
    out["tree_purity"] = _max(out["tree_purity_stages"])
    return out


def teacher_eval_key(teacher_dir: Path, dataset, n_samples: int, batch_size: int, device) -> Dict[str, Any]:
    """What the teacher's evaluation pass depends on: the teacher file, the dataset
    content, the evaluation subset (size and seed), the batch size and the device type
    (float results may differ between them), and the torch version."""
    return {"teacher_sha": kio.file_sha(Path(teacher_dir) / layout.MODEL), "dataset_fingerprint": dataset.fingerprint,
            "split": "test", "n_samples": int(n_samples), "subset_seed": SUBSET_SEED, "batch_size": int(batch_size),
            "device": torch.device(device).type, "torch": str(torch.__version__), "version": 1}


def load_teacher_eval(teacher_dir: Path, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The cached teacher pass (``teacher_dir/eval_features.pt``, ``weights_only`` load)
    when it exists and was made under ``key``; else None (missing, unreadable, stale)."""
    path = Path(teacher_dir) / EVAL_FEATURES_FILE
    if not path.is_file():
        return None
    try:
        blob = kio.load_torch(path)
    except Exception:  # truncated / corrupt: recompute (and overwrite)
        return None
    return blob if blob.get("key") == key else None


def save_teacher_eval(teacher_dir: Path, key: Dict[str, Any], stages, logits, gradcam) -> None:
    """Atomically: parallel evaluate jobs of one teacher at worst write identical files."""
    kio.save_torch({"key": key, "stages": list(stages), "logits": logits, "gradcam": gradcam},
                   Path(teacher_dir) / EVAL_FEATURES_FILE)


# --------------------------------------------------------------------------- the record
def _max(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


_CODE_SHA: Optional[str] = None


@functools.lru_cache(maxsize=None)
def _imported_modules(source: bytes, module: str) -> frozenset:
    """The dotted names a module's ``source`` imports, relative imports resolved (kept
    per content: parsing is most of the fingerprint's time); ``from a import b`` counts
    as ``a`` and ``a.b`` (``b`` may be a submodule)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = module.split(".")
            base = ".".join(parts[: len(parts) - node.level] + ([node.module] if node.module else [])) \
                if node.level else node.module
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(out)


def method_own_files(root: Path) -> List[Path]:
    """The files of ``root/methods/`` that are one method's own: a module no other module
    of the package imports (``methods/__init__`` finds them by listing the folder). A
    module another one imports (``base``, ``adapters``, ``kd`` under ``tdd``, ``tdd`` under
    the evaluation) is shared code."""
    modules = {p: ".".join(("kdbench",) + p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")}
    imported = set()
    for path, module in modules.items():
        imported |= _imported_modules(path.read_bytes(), module) - {module}
    return sorted(p for p in (root / "methods").glob("*.py")
                  if not p.name.startswith("_") and modules[p] not in imported)


def package_fingerprint(root: Path) -> str:
    """SHA-256 (16 hex digits) of the ``.py`` files under ``root`` (their relative paths
    and bytes, sorted) except the methods' own files (:func:`method_own_files`)."""
    own = set(method_own_files(root))
    h = hashlib.sha256()
    for path in sorted(set(root.rglob("*.py")) - own):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_fingerprint() -> str:
    """:func:`package_fingerprint` of the installed kdbench package: a record computed by
    other shared code is never reused, and a method's own file is keyed by the record's
    ``method_source`` alone, so a new or edited method file re-evaluates only its own
    records (docs/adding-a-method.md)."""
    global _CODE_SHA
    if _CODE_SHA is None:
        _CODE_SHA = package_fingerprint(Path(__file__).resolve().parents[1])
    return _CODE_SHA


def _versions(*dists: str) -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in dists:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def record_key(student_dir: Path, teacher_dir: Path, base_dir: Optional[Path], *, method: str, dataset,
               evaluation: Dict[str, Any], device: torch.device, teacher_seed: Optional[int],
               tdd_hparams: Optional[dict], batch_size: int) -> Dict[str, Any]:
    """Everything one evaluation record depends on: the student's model and metrics files,
    the teacher's and the base's model files and the teacher's tree file (by content:
    an edited ``hierarchy.json`` is read again), the dataset content, the
    evaluation settings, the tree settings, the batch size, the device type and torch's
    thread count, kdbench's shared code (:func:`code_fingerprint`: every file but the
    methods' own), the source file of the run's method (in-tree or a plugin's) and the
    torch / torchvision / timm versions."""
    base = Path(base_dir) / layout.MODEL if base_dir is not None and method != "vanilla" else None
    tree_file = Path(teacher_dir) / PARTITIONS_FILE
    try:
        method_file = inspect.getsourcefile(get_method(method))
        method_sha = kio.file_sha(method_file) if method_file else None
    except (KDBenchError, TypeError, OSError):
        method_sha = None
    return {"student": kio.file_sha(student_dir / layout.MODEL), "metrics": kio.file_sha(student_dir / layout.METRICS),
            # the teacher file, dataset content, subset, batch size, device type, torch version
            "teacher_pass": teacher_eval_key(teacher_dir, dataset, int(evaluation["n_samples"]), batch_size, device),
            "base": kio.file_sha(base) if base is not None and base.is_file() else None,
            "teacher_tree": kio.file_sha(tree_file) if tree_file.is_file() else None,
            "dataset": dataset.name, "evaluation": kio.json_types(evaluation), "teacher_seed": teacher_seed,
            "tree": tree_settings(tree_hparams(tdd_hparams), dataset.num_classes), "threads": torch.get_num_threads(),
            "code": code_fingerprint(), "method_source": method_sha, "versions": _versions("torchvision", "timm")}


def reused_record(student_dir: Path, key: Dict[str, Any], figure_path) -> Optional[Dict[str, Any]]:
    """The record cached beside the student (:data:`RECORD_CACHE_FILE`) when it was
    computed under ``key`` (and its figure, when one is asked for, is still there); None
    otherwise (missing, unreadable, another key)."""
    path = Path(student_dir) / RECORD_CACHE_FILE
    if figure_path is not None and key["evaluation"].get("figures", True) and not Path(figure_path).is_file():
        return None
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(blob, dict) or blob.get("key") != key or not isinstance(blob.get("record"), dict):
        return None
    rec = blob["record"]
    return rec if set(rec) == set(RECORD_KEYS) else None


@dataclass
class _Evaluation:
    """What the steps of one evaluation share: the inputs, the loaded models, the pass
    over the evaluation subset and the explanation maps (filled in step by step)."""

    ds: Any
    device: torch.device
    ev: Dict[str, Any]
    batch_size: int
    student_dir: Path
    teacher_dir: Path
    method: str
    tdd_hparams: Optional[dict]
    teacher: Any = None
    deployed: Any = None
    student: Any = None
    base: Any = None
    cached: Optional[Dict[str, Any]] = None  # the teacher's cached pass (load_teacher_eval), or None
    tkey: Optional[Dict[str, Any]] = None  # its key (teacher_eval_key)
    data: Optional[Dict[str, Any]] = None  # collect() over the evaluation subset
    T: Optional[Dict[str, Any]] = None  # the teacher's stages and logits (cached or from data)
    maps: Dict[str, torch.Tensor] = field(default_factory=dict)  # Grad-CAM / UniCAM maps for the figure


def read_run_metrics(student_dir: Path, teacher_dir: Path, ds) -> Dict[str, Any]:
    """The student's ``metrics.json``, after checking that the run's files exist and that
    it was trained on ``ds`` (name and content)."""
    for p in (student_dir / layout.MODEL, student_dir / layout.METRICS, teacher_dir / layout.MODEL):
        if not p.is_file():
            raise KDBenchError(f"evaluate: {p} not found (train that run first)")
    metrics = json.loads((student_dir / layout.METRICS).read_text())
    if metrics.get("dataset") not in (None, ds.name):
        raise KDBenchError(f"evaluate: run {student_dir} is on {metrics['dataset']!r}, dataset given is {ds.name!r}")
    if metrics.get("dataset_fingerprint") not in (None, ds.fingerprint):
        raise KDBenchError(f"evaluate: run {student_dir} was trained on dataset content {metrics['dataset_fingerprint']}, "
                           f"the loaded {ds.name!r} is {ds.fingerprint} (different options?)")
    return metrics


def _load_models(e: _Evaluation, base_dir) -> Tuple[dict, dict]:
    """The teacher, the deployed student (and its network) and, for a distilled run, the
    vanilla base when its model exists; returns the teacher's and the student's metadata."""
    e.teacher, tmeta = load_model(e.teacher_dir / layout.MODEL, e.device)
    e.teacher.requires_grad_(False)
    e.deployed, smeta = load_deployed(e.student_dir / layout.MODEL, e.teacher, e.device)
    e.student = e.deployed.student.eval()
    if e.method != "vanilla" and base_dir is not None and (Path(base_dir) / layout.MODEL).is_file():
        e.base, bmeta = load_model(Path(base_dir) / layout.MODEL, e.device)
        if bmeta["arch"] != smeta["arch"] or bmeta.get("method") != "vanilla":
            raise KDBenchError(f"evaluate: base {base_dir} holds a {bmeta.get('method')} {bmeta['arch']}, "
                               f"expected the vanilla {smeta['arch']}")
    elif e.method != "vanilla" and base_dir is not None:
        print(f"[evaluate] base run {base_dir} missing: rs / unicam metrics are null", file=sys.stderr)
    return tmeta, smeta


def _new_record(metrics: dict, ds, tmeta: dict, smeta: dict, teacher_seed: Optional[int]) -> Dict[str, Any]:
    """The record's identity and the training numbers copied from ``metrics.json``; every
    metric None until a step fills it."""
    rec: Dict[str, Any] = {k: None for k in RECORD_KEYS}
    rec.update(dataset=ds.name, dataset_source=ds.source or None, teacher=tmeta["arch"], student=smeta["arch"],
               method=metrics["method"], seed=metrics["seed"],
               teacher_seed=next((v for v in (metrics.get("teacher_seed"), teacher_seed, tmeta.get("seed"))
                                  if v is not None), None))
    for key in ("top1", "top1_sel", "top1_ood", "train_s", "train_img_s", "params"):
        rec[key] = metrics.get(key)
    return rec


@torch.no_grad()
def _accuracy_step(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """Accuracy and agreement over the whole test splits (the deployed model)."""
    ds, device = e.ds, e.device
    test = ds.splits["test"]
    t_preds = cached_teacher_predictions(e.teacher, e.teacher_dir, ds, device)
    s_pred = predict_split(e.deployed.predict, ds, "test", device)
    top1 = accuracy(s_pred, test.labels)
    if rec["top1"] is not None and abs(top1 - rec["top1"]) > 1.0 / max(len(test), 1) + 1e-9:
        raise KDBenchError(f"evaluate: the deployed model of {e.student_dir} scores top1={top1:.4f} on test, "
                           f"its metrics.json says {rec['top1']:.4f}: wrong model file or dataset?")
    if rec["top1"] is None:
        rec["top1"] = top1
    rec["agreement"] = agreement(s_pred, t_preds["test"])
    if "test_ood" in ds.splits:
        rec["agreement_ood"] = agreement(predict_split(e.deployed.predict, ds, "test_ood", device),
                                         t_preds["test_ood"])


def _subset_pass(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """One pass per model over the fixed evaluation subset. The teacher's part is the same
    for every student of the teacher (un-augmented images, the teacher in eval mode): it is
    cached once per teacher run, keyed by everything it depends on, and recomputed when any
    of it changes."""
    n_samples = int(e.ev["n_samples"])
    subset = eval_subset(e.ds, n_samples)
    e.tkey = teacher_eval_key(e.teacher_dir, e.ds, n_samples, e.batch_size, e.device)
    e.cached = load_teacher_eval(e.teacher_dir, e.tkey)
    models = {**({"teacher": e.teacher} if e.cached is None else {}), "student": e.student,
              **({"base": e.base} if e.base is not None else {})}
    e.data = collect(models, e.ds, subset, e.device, e.batch_size, keep_images=max(1, int(e.ev["figure_images"])))
    rec["n_eval"] = int(len(e.data["labels"]))
    e.T = e.data["teacher"] if e.cached is None else {"stages": e.cached["stages"], "logits": e.cached["logits"]}


def _gradcam_step(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """Grad-CAM of teacher and student for the teacher's class (``expl_sim``), and of the
    student for the true class against the masks (``epg``)."""
    device, size, S = e.device, e.data["size"], e.data["student"]
    labels, masks = e.data["labels"], e.data["masks"]
    t_cls = e.T["logits"].argmax(1)
    if e.cached is None:
        cam_t, _ = gradcam_maps(e.teacher, last_stage=e.T["stages"][-1].to(device), classes=t_cls.to(device),
                                size=size)
        cam_t = cam_t.cpu()
        save_teacher_eval(e.teacher_dir, e.tkey, e.T["stages"], e.T["logits"], cam_t)
    else:
        cam_t = e.cached["gradcam"]
    cam_s, _ = gradcam_maps(e.student, last_stage=S["stages"][-1].to(device), classes=t_cls.to(device), size=size)
    cam_s = cam_s.cpu()
    e.maps.update({"teacher Grad-CAM": cam_t, "student Grad-CAM": cam_s})
    rec["expl_sim"] = explanations.expl_sim(cam_t, cam_s)
    if masks is not None:
        cam_gt, _ = gradcam_maps(e.student, last_stage=S["stages"][-1].to(device), classes=labels.to(device),
                                 size=size)
        rec["epg"] = explanations.epg(cam_gt.cpu(), masks)


def _similarity_step(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """FSS (per stage pair) and, against the base, RS (per stage; rs = the last stage) and
    the UniCAM maps; ``evaluation.fss_estimator`` names the estimator (similarity.py)."""
    S, labels, masks = e.data["student"], e.data["labels"], e.data["masks"]
    n_eval, num_classes = rec["n_eval"], e.ds.num_classes
    estimator = rec["fss_estimator"] = e.ev["fss_estimator"]
    distances = similarity.DistanceCache()  # each stage's U-centred matrix once (FSS, RS both ways)
    if n_eval >= 4:  # distance correlations need n >= 4, UniCAM a batch of >= 8
        rec["fss_stages"] = similarity.fss_stages(S["stages"], e.T["stages"], estimator, distances)
        rec["fss"] = _mean(rec["fss_stages"])
    if e.base is None or n_eval < 8:
        return
    B = e.data["base"]
    rec["rs_stages"], rec["rs_residual_stages"] = similarity.rs_stages(
        S["stages"], B["stages"], labels, num_classes, estimator, distances)
    rec["rs"], rec["rs_residual"] = rec["rs_stages"][-1], rec["rs_residual_stages"][-1]
    # the reference's UniCAM target: RS of the pooled embeddings, maps min-max scaled
    device = e.device
    uni_d, uni_r = unicam_maps(S["stages"][-1].to(device), B["stages"][-1].to(device), labels.to(device),
                               num_classes=num_classes, size=e.data["size"], student_embed=e.student.head.embed,
                               base_embed=e.base.head.embed)
    uni_d, uni_r = uni_d.cpu(), uni_r.cpu()
    e.maps.update({"UniCAM distilled": uni_d, "UniCAM residual": uni_r})
    if masks is not None:
        rec["unicam_epg_distilled"] = explanations.epg(uni_d, masks)
        rec["unicam_epg_residual"] = explanations.epg(uni_r, masks)


def _decision_step(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """The decision process: probes on pooled student stages vs the teacher's partitions;
    the walk's partition ARI; the teacher's tree measured (datasets with a hierarchy)."""
    ds, num_classes, labels = e.ds, e.ds.num_classes, e.data["labels"]
    tree = cached_teacher_tree(e.teacher, e.teacher_dir / layout.MODEL, ds, hparams=tree_hparams(e.tdd_hparams),
                               device=e.device, batch_size=BATCH_SIZE)
    partitions = tree["partitions"]
    train = ds.splits["train"]
    probe_split = train.subset(subset_indices(len(train), int(e.ev["probe_train_samples"])))
    P = collect({"student": e.student}, ds, probe_split, e.device, e.batch_size, pooled_only=True)
    test_pooled = [s.mean(dim=(2, 3)) for s in e.data["student"]["stages"]]
    dc, dc_stages = hierarchy.decision_consistency(
        [s.numpy() for s in P["student"]["stages"]], P["labels"].numpy(), [s.numpy() for s in test_pooled],
        labels.numpy(), partitions, num_classes, n_teacher_stages=e.teacher.num_stages)
    rec["decision_consistency"], rec["decision_consistency_stages"] = dc, dc_stages
    # the walk's partition (TDD's training targets), not the tree's quality: docs/metrics.md "TDD's tree"
    rec["walk_partition_ari"] = hierarchy.walk_partition_ari(partitions, ds.hierarchy, num_classes)
    if ds.hierarchy:
        rec.update(teacher_tree_record(tree, ds, e.teacher, e.teacher_dir, e.tdd_hparams))


def _efficiency_step(e: _Evaluation, rec: Dict[str, Any]) -> None:
    """FLOPs per image of the deployed model; the parameter count when metrics.json has none."""
    rec["flops"] = efficiency.flops_per_image(e.deployed.predict, e.data["images"][:1].to(e.device))
    if rec["params"] is None:
        rec["params"] = efficiency.count_params(e.student)


def _figure_step(e: _Evaluation, rec: Dict[str, Any], figure_path: Path) -> None:
    """The grid PNG: the first images with their Grad-CAM (and UniCAM) maps."""
    k = min(int(e.ev["figure_images"]), len(e.data["labels"]))
    cols = {name: maps[:k] for name, maps in e.maps.items()}
    title = f"{e.ds.name} {rec['teacher']}->{rec['student']} {e.method} s{rec['seed']}"
    write_grid(figure_path, to_display(e.data["images"][:k], e.ds.mean, e.ds.std), cols, title)


def _write_record(rec: Dict[str, Any], out_path) -> None:
    if out_path is not None:
        kio.write_json(rec, Path(out_path))
        seal(out_path)  # size + SHA-256, checked before the pipeline's next DAG (kdbench.integrity)


def evaluate_run(student_dir, teacher_dir, base_dir=None, *, dataset, evaluation: Optional[dict] = None,
                 out_path=None, figure_path=None, device="cpu", teacher_seed: Optional[int] = None,
                 tdd_hparams: Optional[dict] = None, batch_size: int = BATCH_SIZE,
                 reuse: bool = True) -> Dict[str, Any]:
    """Evaluate one student run.

    ``student_dir`` / ``teacher_dir``: run dirs with ``model.pt`` (+ the student's
    ``metrics.json``); ``base_dir``: the ``vanilla`` run of the same pair, student and
    seed (None or missing: no RS / UniCAM; ignored when the run is itself vanilla);
    ``dataset``: the loaded :class:`~kdbench.data.base.Dataset`; ``evaluation``: the
    profile's ``evaluation`` mapping. Writes the record atomically to ``out_path`` and the
    grid PNG to ``figure_path`` when given (and ``evaluation.figures`` is true).

    The record is also kept beside the student (:data:`RECORD_CACHE_FILE`, with its
    :func:`record_key`); with ``reuse`` a record computed under the same key is returned
    (and written to ``out_path``) without evaluating again. Its ``eval_s`` is the time the
    evaluation took when it ran."""
    t0 = time.time()
    set_deterministic()
    device = torch.device(device)
    ev = {**EVAL_DEFAULTS, **(evaluation or {})}
    similarity.check_estimator(ev["fss_estimator"])  # bad input: fail before any work
    student_dir, teacher_dir = Path(student_dir), Path(teacher_dir)
    metrics = read_run_metrics(student_dir, teacher_dir, dataset)

    def current_key() -> Dict[str, Any]:
        return record_key(student_dir, teacher_dir, base_dir, method=metrics["method"], dataset=dataset,
                          evaluation=ev, device=device, teacher_seed=teacher_seed, tdd_hparams=tdd_hparams,
                          batch_size=batch_size)

    rec = reused_record(student_dir, current_key(), figure_path) if reuse else None
    if rec is not None:
        print(f"[evaluate] {student_dir}: inputs unchanged since its last evaluation: record reused", file=sys.stderr)
        _write_record(rec, out_path)
        return rec

    e = _Evaluation(ds=dataset, device=device, ev=ev, batch_size=batch_size, student_dir=student_dir,
                    teacher_dir=teacher_dir, method=metrics["method"], tdd_hparams=tdd_hparams)
    rec = _new_record(metrics, dataset, *_load_models(e, base_dir), teacher_seed)
    _accuracy_step(e, rec)
    _subset_pass(e, rec)
    _gradcam_step(e, rec)
    _similarity_step(e, rec)
    _decision_step(e, rec)
    _efficiency_step(e, rec)
    if figure_path is not None and ev.get("figures", True):
        _figure_step(e, rec, Path(figure_path))
    rec["eval_s"] = time.time() - t0
    rec = kio.json_types(rec)
    _write_record(rec, out_path)
    try:
        # the key as it is now: the evaluation may have derived the teacher's tree file
        kio.write_json({"key": current_key(), "record": rec}, student_dir / RECORD_CACHE_FILE)
    except OSError as err:  # a read-only run dir (an imported run): nothing to reuse next time
        print(f"[evaluate] could not keep the record beside {student_dir} ({err})", file=sys.stderr)
    return rec
