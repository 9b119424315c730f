"""External teacher checkpoints: use a published teacher instead of training one.

A profile's ``teachers`` key maps dataset -> arch -> a checkpoint spec (or names a YAML
file holding that mapping, e.g. ``params/teachers/cifar100.yaml``)::

    teachers:
      cifar100:
        resnet32x4: {checkpoint: cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth,
                     sha256: null, reported_top1: 79.42, source: "...", url: "http://..."}

``checkpoint`` is a path (a relative one is under ``$KDBENCH_TEACHERS``, default
``download_ckpts/`` in the project root, mdistiller's folder) or an http(s) URL (then
the file is kept under ``$KDBENCH_TEACHERS/<host>/<path>``). ``sha256`` pins the file
(``null``: not pinned; the import records and prints the hash it saw). Files are only
downloaded by ``kdbench fetch-teachers --download``: never by a job.

Where each check happens (all before any student job):

- profile validation (every ``kdbench`` command and the Snakefile): the spec's structure
  (schema), its arch names (known, with a reference key layout) and dataset names, and a
  fixed ``teacher_seed`` (one external checkpoint is one teacher);
- DAG build (the Snakefile, and ``kdbench validate`` / ``fetch-teachers``): every used
  file exists, has the pinned sha256, loads with ``torch.load(weights_only=True)`` and
  its keys and shapes fit the arch (:mod:`kdbench.models.reference`). Hashing and
  loading a few hundred MB at every DAG build would cost seconds, so the verdict is cached
  in ``<results_dir>/.kdbench/teacher_checks.json`` by (path, size, mtime_ns, pinned hash,
  arch): a changed file is checked again;
- the ``import-teacher`` job (``rule import_teacher``): everything again, uncached, plus
  the class count against the dataset; it then measures the test accuracy once and writes
  ``results/teachers/<d>/<arch>/s<seed>/`` like ``train-teacher`` does (``model.pt`` in
  kdbench's format, ``metrics.json`` with ``top1`` and ``source``, ``reported_top1``, the
  checkpoint's path and sha256), so every downstream job and the board work unchanged.

Units: ``reported_top1`` is a percentage in the spec (as sources print it); in
``metrics.json`` it is a fraction like ``top1`` (``top1_minus_reported`` too). The
``val_top1`` of an imported teacher is not held out: such teachers were trained on the
whole training set, kdbench's validation split included.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch

from kdbench.config import layout
from kdbench import io as kio
from kdbench.config import ParamsError, load_yaml, project_root
from kdbench.config.run import teacher_config
from kdbench.data import DATASETS
from kdbench.data.cache import load_dataset
from kdbench.engine.model_io import save_model
from kdbench.engine.runtime import select_device, set_deterministic, set_threads
from kdbench.errors import KDBenchError
from kdbench.evaluation.accuracy import accuracy, calibration, ood_score
from kdbench.evaluation.predict import predict_split, split_logits
from kdbench.integrity import seal
from kdbench.methods import get_method
from kdbench.models import check_model_name, create_model
from kdbench.models.reference import _family, convert_reference_state, key_map, load_reference_state, supported_archs

TEACHERS_ENV = "KDBENCH_TEACHERS"
DEFAULT_DIR = "download_ckpts"
CHECKS_FILE = Path(".kdbench") / "teacher_checks.json"
_CHUNK = 1 << 20


class ExternalTeacherError(KDBenchError, ValueError):
    """An external teacher checkpoint is missing, has the wrong hash, or does not fit."""


@dataclass(frozen=True)
class ExternalTeacher:
    dataset: str
    arch: str
    checkpoint: str
    sha256: Optional[str] = None
    url: Optional[str] = None
    reported_top1: Optional[float] = None
    source: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.arch}"

    @property
    def is_url(self) -> bool:
        return urlparse(self.checkpoint).scheme in ("http", "https")

    @property
    def download_url(self) -> Optional[str]:
        return self.checkpoint if self.is_url else self.url

    @property
    def path(self) -> Path:
        """Where the file is (or is to be put)."""
        if self.is_url:
            u = urlparse(self.checkpoint)
            return teachers_root() / u.netloc / u.path.lstrip("/")
        p = Path(os.path.expandvars(os.path.expanduser(self.checkpoint)))
        return p if p.is_absolute() else teachers_root() / p


def teachers_root() -> Path:
    """``$KDBENCH_TEACHERS``, else ``download_ckpts/`` in the project root."""
    env = os.environ.get(TEACHERS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return project_root() / DEFAULT_DIR


# --------------------------------------------------------------------------- the profile
def inline_teachers_file(profile: dict, source: str = "params") -> dict:
    """The profile with a ``teachers: path/to/file.yaml`` reference replaced by the file's
    mapping (a relative path: from the working directory, else from the project root)."""
    ref = profile.get("teachers")
    if not isinstance(ref, str):
        return profile
    p = Path(ref).expanduser()
    if not p.is_absolute() and not p.is_file():
        p = project_root() / ref
    if not p.is_file():
        raise ParamsError(f"{source}: teachers file {ref!r} does not exist (looked in {Path.cwd()} "
                          f"and {project_root()})")
    out = dict(profile)
    out["teachers"] = load_yaml(p)
    return out


def check_teacher_specs(profile: dict, source: str = "params") -> None:
    """Names in ``teachers`` (datasets, archs) and the teacher seed; no file access."""
    specs = profile.get("teachers") or {}
    for dataset, archs in specs.items():
        DATASETS.get(dataset)
        for arch in archs or {}:
            check_model_name(arch)
            if _family(arch) is None:
                raise ParamsError(f"{source}: teachers.{dataset}.{arch}: no reference checkpoint layout for "
                                  f"{arch!r}; supported: {', '.join(supported_archs())} (and wrn_<depth>_<width>)")
    if used_teachers(profile) and profile.get("teacher_seed", 0) is None:
        raise ParamsError(f"{source}: teacher_seed is null (a teacher per student seed), but an external "
                          f"checkpoint is one teacher: set teacher_seed to an integer")


def external_teacher(profile: dict, dataset: str, arch: str) -> Optional[ExternalTeacher]:
    spec = ((profile.get("teachers") or {}).get(dataset) or {}).get(arch)
    if spec is None:
        return None
    spec = dict(spec)
    return ExternalTeacher(dataset=dataset, arch=arch, checkpoint=str(spec["checkpoint"]),
                           sha256=(spec.get("sha256") or None) and str(spec["sha256"]).lower(),
                           url=spec.get("url"), reported_top1=spec.get("reported_top1"), source=spec.get("source"))


def used_teachers(profile: dict) -> List[ExternalTeacher]:
    """The external teachers the profile's runs use (dataset x pair teacher), in order."""
    out, seen = [], set()
    for dataset in profile.get("datasets", {}):
        for pair in profile.get("pairs", []):
            t = external_teacher(profile, dataset, pair["teacher"])
            if t is not None and t.name not in seen:
                seen.add(t.name)
                out.append(t)
    return out


# --------------------------------------------------------------------------- files
def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_message(t: ExternalTeacher, params: str = "PARAMS") -> str:
    """Where the file should be, and how to get it there. ``params``: how the profile was
    named on the command line (``--params`` and any ``--set``)."""
    msg = f"external teacher {t.name}: checkpoint not found at {t.path}: put the file there"
    if not t.is_url:
        msg += f" (or set ${TEACHERS_ENV} to the folder holding {t.checkpoint})"
    if t.download_url:
        msg += f", or download it from {t.download_url} with `kdbench fetch-teachers --params {params} --download`"
    return msg


def require_file(t: ExternalTeacher, params: str = "PARAMS") -> Path:
    p = t.path
    if not p.is_file():
        raise ExternalTeacherError(missing_message(t, params))
    return p


def check_hash(t: ExternalTeacher, digest: str) -> None:
    if t.sha256 is not None and digest != t.sha256:
        raise ExternalTeacherError(
            f"external teacher {t.name}: {t.path} has sha256 {digest}, but the profile pins {t.sha256}: "
            f"a different or corrupt file (fetch it again, or correct teachers.{t.dataset}.{t.arch}.sha256)")


def read_checkpoint(path: os.PathLike, name: str = "checkpoint") -> Tuple[Dict[str, "object"], Optional[int]]:
    """The state dict of a checkpoint file and its ``epoch`` entry (None if absent),
    loaded with ``torch.load(weights_only=True)``: a RepDistiller/mdistiller ``{'model': state_dict, ...}`` or a bare state dict. A pickle
    that needs more than tensors and plain containers (code, classes) is refused."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ExternalTeacherError(
            f"{name}: {path} is refused: it does not load with torch.load(weights_only=True), i.e. it holds "
            f"more than tensors and plain containers (e.g. code or objects); kdbench never unpickles those. "
            f"Re-save just the state dict. ({first[:300]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ExternalTeacherError(f"{name}: {path} is not a readable torch checkpoint: "
                                   f"{type(err).__name__}: {str(err)[:300]}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(blob)[:8] if isinstance(blob, dict) else type(blob).__name__
        raise ExternalTeacherError(f"{name}: {path} holds no state dict (expected {{'model': state_dict}} as "
                                   f"RepDistiller's train_teacher.py saves, or a bare state dict; found {keys})")
    epoch = blob.get("epoch") if state is not blob else None
    return state, (int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None)


def check_fits(t: ExternalTeacher, state: dict, num_classes: Optional[int] = None) -> int:
    """Raise unless ``state`` fits ``t.arch``; returns its class count (the classifier's
    rows). The probe model is built on the CPU: building on the ``meta`` device first
    imports torch's meta kernels, several seconds at every DAG build."""
    model = create_model(t.arch, num_classes or 10)
    fc = key_map(model)["head.fc.weight"]
    if fc not in state:
        raise ExternalTeacherError(f"external teacher {t.name}: {t.path} has no classifier weight {fc!r} "
                                   f"(is it a {t.arch}?)")
    k = int(state[fc].shape[0])
    if num_classes is not None and k != num_classes:
        raise ExternalTeacherError(f"external teacher {t.name}: {t.path} classifies {k} classes, "
                                   f"dataset {t.dataset!r} has {num_classes}")
    if k != (num_classes or 10):
        model = create_model(t.arch, k)
    convert_reference_state(model, state, source=f"external teacher {t.name} ({t.path})")
    return k


def _load_checks(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def verify_teachers(profile: dict, params: str = "PARAMS", cache: bool = True, quiet: bool = False) -> List[dict]:
    """Check every used external teacher (exists, pinned hash, keys and shapes) before any
    job; results cached (see the module docstring). Returns one record per teacher."""
    cache_path = Path(profile.get("results_dir", "results")) / CHECKS_FILE
    checks = _load_checks(cache_path) if cache else {}
    changed, out = False, []
    for t in used_teachers(profile):
        p = require_file(t, params)
        st = p.stat()
        key = str(p.resolve())
        ident = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "pinned": t.sha256, "arch": t.arch}
        rec = checks.get(key)
        if not (rec and all(rec.get(k) == v for k, v in ident.items())):
            digest = file_sha256(p)
            check_hash(t, digest)
            classes = check_fits(t, read_checkpoint(p, f"external teacher {t.name}")[0])
            rec = {**ident, "sha256": digest, "num_classes": classes}
            checks[key] = rec
            changed = True
        if t.sha256 is None and not quiet:
            print(f"[kdbench] external teacher {t.name}: {p} is not pinned; its sha256 is {rec['sha256']} "
                  f"(add `sha256: {rec['sha256']}` to its teachers entry to pin it)", file=sys.stderr)
        out.append({"teacher": t, "path": p, **rec})
    if changed and cache:
        kio.write_json(checks, cache_path)
    return out


def import_identity(t: ExternalTeacher, digest: str, dataset_options: dict) -> str:
    """The import job's config hash: the file's content, the arch and the data options."""
    blob = json.dumps({"kind": "teacher-import", "dataset": t.dataset, "arch": t.arch, "sha256": digest,
                       "dataset_options": dataset_options}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def rule_identity(profile: dict, dataset: str, arch: str) -> str:
    """What the Snakemake rule re-runs on: the spec (path, pin) and the data options."""
    t = external_teacher(profile, dataset, arch)
    spec = asdict(t) if t is not None else {}
    return json.dumps({"spec": spec, "dataset_options": profile["datasets"].get(dataset)}, sort_keys=True, default=str)


# --------------------------------------------------------------------------- the job
def import_teacher(profile: dict, dataset: str, arch: str, seed: int, out_dir: os.PathLike, *,
                   params: str = "PARAMS", tracker=None, force: bool = False) -> dict:
    """Load the external checkpoint of (dataset, arch), measure its accuracy once and write
    ``model.pt`` + ``metrics.json`` (the train-teacher outputs) to ``out_dir``."""
    t = external_teacher(profile, dataset, arch)
    if t is None:
        raise ExternalTeacherError(f"the profile names no external teacher for {dataset}/{arch} "
                                   f"(teachers.{dataset}.{arch}); train it with `kdbench train-teacher`")
    t0 = time.time()
    out_dir = Path(out_dir)
    path = require_file(t, params)
    digest = file_sha256(path)
    check_hash(t, digest)
    ident = import_identity(t, digest, profile["datasets"][dataset])
    done = _already_imported(out_dir, ident, force)
    if done is not None:
        return done
    state, epoch = read_checkpoint(path, f"external teacher {t.name}")
    set_threads(profile["threads"])
    set_deterministic()
    device = select_device(profile["device"])
    ds = load_dataset(dataset, profile["datasets"][dataset], Path(profile["results_dir"]))
    check_fits(t, state, ds.num_classes)
    model = load_reference_state(create_model(arch, ds.num_classes), state, f"external teacher {t.name} ({path})")
    distiller = get_method("vanilla")(model, None, ds.num_classes, {}, input_size=ds.image_size).to(device).eval()
    if tracker is not None:
        tracker.start(f"{dataset}/{arch}/import/s{seed}",
                      {"checkpoint": str(path), "sha256": digest, "source": t.source, "arch": arch, "dataset": dataset},
                      tags={"kind": "teacher", "method": "import", "dataset": dataset})
    scores = _imported_scores(distiller.predict, ds, device, int(profile["teacher_train"].get("eval_batch_size", 512)))
    reported = None if t.reported_top1 is None else float(t.reported_top1) / 100.0
    metrics = {
        "kind": "teacher", "dataset": dataset, "arch": arch, "student": arch, "teacher": None,
        "method": "vanilla", "seed": seed, "teacher_seed": None, "epochs": epoch, **scores,
        "train_s": 0.0, "wall_s": time.time() - t0, "train_img_s": None,
        "params": sum(p.numel() for p in model.parameters()), "n_train": None,
        "config_hash": ident, "dataset_fingerprint": ds.fingerprint, "device": str(device), "hparams": {},
        "external": True, "source": t.source or (t.download_url or str(path)),
        "reported_top1": reported, "top1_minus_reported": None if reported is None else scores["top1"] - reported,
        "checkpoint": str(path), "checkpoint_sha256": digest, "checkpoint_url": t.download_url,
    }
    # the model.pt metadata needs an integer epoch count (Distiller(epochs=...)): the
    # checkpoint's own, else the profile's teacher recipe length
    run = _ImportConfig(dataset, arch, seed, ident, epoch or int(profile["teacher_train"]["epochs"]))
    _write_import(out_dir, distiller, run, ds, metrics, tracker)
    return metrics


def _already_imported(out_dir: Path, ident: str, force: bool) -> Optional[dict]:
    """The metrics of an earlier import of the same checkpoint into ``out_dir`` (unless
    ``force``), else None."""
    mpath = out_dir / layout.METRICS
    if not force and mpath.is_file() and (out_dir / layout.MODEL).is_file():
        try:
            if json.loads(mpath.read_text()).get("config_hash") == ident:
                print(f"{out_dir} already holds this checkpoint (use --force to import again)", file=sys.stderr)
                return json.loads(mpath.read_text())
        except ValueError:
            pass
    return None


def _imported_scores(predict, ds, device, bs: int) -> dict:
    """The imported teacher's scores, measured once: test top-1 (also ``top1_sel``: there
    is no epoch to select) and calibration, validation top-1, the OOD score."""
    test = ds.splits["test"]
    test_logits = split_logits(predict, ds, "test", device, bs)
    top1 = accuracy(test_logits.argmax(1), test.labels)
    val_top1 = accuracy(predict_split(predict, ds, "val", device, bs), ds.splits["val"].labels) \
        if "val" in ds.splits else None
    top1_ood = None
    if "test_ood" in ds.splits:
        split = ds.splits["test_ood"]
        top1_ood = ood_score(ds, predict_split(predict, ds, split, device, bs), split)
    return {"top1": top1, "top1_sel": top1, "best_epoch": None, **calibration(test_logits, test.labels),
            # the external teacher was trained on the whole training set, kdbench's val split
            # included: this number is not a held-out one
            "val_top1": val_top1, "top1_ood": top1_ood}


def _write_import(out_dir: Path, distiller, run: "_ImportConfig", ds, metrics: dict, tracker) -> None:
    """``model.pt`` (kdbench's format) and, last, ``metrics.json``, both sealed; a stale
    train-teacher checkpoint goes."""
    mpath = out_dir / layout.METRICS
    meta = {"input_size": ds.image_size, "external": True, "source": metrics["source"],
            "checkpoint_sha256": metrics["checkpoint_sha256"]}
    save_model(out_dir / layout.MODEL, distiller, run, ds.num_classes, meta)
    seal(out_dir / layout.MODEL)  # size + SHA-256, checked before the pipeline's next DAG (kdbench.integrity)
    kio.write_json(metrics, mpath)
    seal(mpath)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)  # a stale train-teacher checkpoint
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_artifacts([mpath])
        tracker.finish()


class _ImportConfig:
    """What ``save_model`` reads from a run config, with the import's identity."""

    def __init__(self, dataset: str, arch: str, seed: int, config_hash: str, epochs: int):
        self.arch, self.method, self.dataset, self.seed = arch, "vanilla", dataset, seed
        self.teacher, self.hparams, self.recipe = None, {}, {"epochs": epochs}
        self.config_hash = config_hash


# --------------------------------------------------------------------------- fetching
def fetch_teachers(profile: dict, *, download: bool = False, params: str = "PARAMS",
                   timeout: float = 60.0) -> List[str]:
    """One status line per used external teacher; with ``download``, fetch the missing
    files from their URLs first (atomically; the pinned hash is checked after)."""
    lines = []
    for t in used_teachers(profile):
        p = t.path
        if not p.is_file() and download:
            if not t.download_url:
                raise ExternalTeacherError(f"external teacher {t.name}: no url to download from; "
                                           + missing_message(t, params))
            _download(t, p, timeout, params)
        if not p.is_file():
            lines.append(f"MISSING  {t.name}: {missing_message(t, params)}")
            continue
        digest = file_sha256(p)
        check_hash(t, digest)
        check_fits(t, read_checkpoint(p, f"external teacher {t.name}")[0])
        pin = "sha256 ok" if t.sha256 else f"not pinned (sha256: {digest})"
        lines.append(f"OK       {t.name}: {p} ({p.stat().st_size / 1e6:.1f} MB, {pin})")
    return lines


def _download(t: ExternalTeacher, dest: Path, timeout: float, params: str) -> None:
    import tempfile  # standard library; only a download needs these (urllib.request pulls in http.client, ssl)
    import urllib.error
    import urllib.request

    url = t.download_url
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"[kdbench] downloading {t.name} from {url} -> {dest}", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                fh.write(chunk)
        digest = file_sha256(tmp)
        if t.sha256 is not None and digest != t.sha256:
            raise ExternalTeacherError(f"external teacher {t.name}: the file downloaded from {url} has sha256 "
                                       f"{digest}, the profile pins {t.sha256}; not kept")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise ExternalTeacherError(f"external teacher {t.name}: download from {url} failed "
                                   f"({type(err).__name__}: {err}); without internet: {missing_message(t, params)}"
                                   ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)



def expected_teacher(profile: dict, dataset: str, arch: str, seed: int) -> Tuple[Optional[str], str]:
    """The identity of the teacher a profile implies for (dataset, arch, seed), and the
    kdbench command that makes it: the config hash of its ``teacher_train`` recipe
    ("train-teacher"), or for an external checkpoint (profile key ``teachers``) its
    import's identity ("import-teacher"; None while the file is missing). A student
    refuses a teacher file of another identity (another profile, an edited recipe)."""
    ext = external_teacher(profile, dataset, arch)
    if ext is None:
        return teacher_config(profile, dataset, arch, seed).config_hash, "train-teacher"
    digest = (ext.sha256 or "").lower() or (file_sha256(ext.path) if ext.path.is_file() else None)
    return (import_identity(ext, digest, profile["datasets"][dataset]) if digest else None), "import-teacher"
