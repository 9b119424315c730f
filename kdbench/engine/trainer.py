"""The training loop shared by teachers (method ``vanilla``) and students (any method).

One call of :func:`run` is one job: it resumes from ``checkpoint.pt`` when one exists for
the same config, checkpoints atomically at the end of every epoch, selects the best epoch
on the validation split only (the test split is scored twice, at the end: the last
epoch's model and the best-validation epoch's model, kept in memory and in the
checkpoint), and writes ``model.pt``, ``history.csv``, ``artifacts.json``
and, last, ``metrics.json`` — each atomically, so a killed job leaves no half result.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import torch

from kdbench.config import RunConfig
from kdbench.engine import distributed as kdist
from kdbench import io as kio
from kdbench.optim import SGD, learning_rate
from kdbench.integrity import seal
from kdbench.engine.runtime import (rng_state, seed_everything, select_device, set_deterministic,
                                    set_rng_state, set_threads)
from kdbench.errors import KDBenchError

CHECKPOINT = "checkpoint.pt"
#: the fixed seed that draws a profile's ``student_shots`` subset (same for every run)
SHOTS_SEED = 0


class NonFiniteLossError(KDBenchError, FloatingPointError):
    """``epoch`` and ``step`` count from 1, as the logs do."""

    def __init__(self, epoch: int, step: int, terms: Dict[str, float]):
        bad = ", ".join(f"{k}={v}" for k, v in terms.items())
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}: {bad} (lower the lr or the loss "
                         f"weights in params/, or check the method's hyperparameters)")
        self.epoch, self.step, self.terms = epoch, step, terms


# ------------------------------------------------------------------------ model files
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
    from kdbench.models import create_model

    blob = kio.load_torch(path, map_location=device)
    meta = blob["meta"]
    model = create_model(meta["arch"], meta["num_classes"])
    state = {k[len("student."):]: v for k, v in blob["state_dict"].items() if k.startswith("student.")}
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def build_distiller(cfg: RunConfig, num_classes: int, input_size: int, teacher=None):
    from kdbench.methods import get_method
    from kdbench.models import create_model

    student = create_model(cfg.arch, num_classes)
    return get_method(cfg.method)(student, teacher, num_classes, cfg.hparams,
                                  epochs=cfg.recipe["epochs"], input_size=input_size)


def load_deployed(path: Path, teacher=None, device="cpu"):
    """The deployed model of a run (``Distiller.predict``), e.g. CID's intervention head
    with its stored prototypes. Parts only used in training may be absent."""
    from kdbench.methods import get_method
    from kdbench.models import create_model

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


# ------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict_split(predict, dataset, split, device, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes over a whole split (un-augmented, in order)."""
    from kdbench.data.loader import make_loader

    preds = []
    for batch in make_loader(dataset, split, batch_size, train=False, device=device):
        preds.append(predict(batch["image"]).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def split_logits(predict, dataset, split, device, batch_size: int = 512) -> torch.Tensor:
    """The logits over a whole split (un-augmented, in order), on the CPU."""
    from kdbench.data.loader import make_loader

    out = [predict(batch["image"]).cpu() for batch in make_loader(dataset, split, batch_size, train=False,
                                                                            device=device)]
    return torch.cat(out) if out else torch.zeros(0, dataset.num_classes)


def calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``ece`` (15 bins) and ``nll`` of a split's logits (None for an empty split)."""
    from kdbench import functional as KF

    if len(labels) == 0:
        return {"ece": None, "nll": None}
    return {"ece": float(KF.expected_calibration_error(logits, labels, n_bins=15)),
            "nll": float(KF.nll(logits, labels))}


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


def worst_group_accuracy(preds, labels, groups) -> float:
    accs = [accuracy(preds[groups == g], labels[groups == g]) for g in torch.unique(groups)]
    return min(accs)


def ood_score(dataset, preds, split) -> float:
    if dataset.ood_metric == "worst_group" and getattr(split, "groups", None) is not None:
        return worst_group_accuracy(preds, split.labels, split.groups)
    return accuracy(preds, split.labels)


# ------------------------------------------------------------------------ the job
class Progress:
    """A tqdm bar on interactive terminals, one line per epoch in logs."""

    def __init__(self, total_epochs: int, steps: int, name: str, enabled: bool = True):
        self.interactive = sys.stderr.isatty() and enabled
        self.total, self.steps, self.name = total_epochs, steps, name
        self.bar, self.enabled = None, enabled

    def epoch_start(self, epoch: int):
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"{self.name} epoch {epoch + 1}/{self.total}", leave=False)

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def epoch_end(self, epoch: int, row: dict):
        if self.bar is not None:
            self.bar.close()
        if not self.enabled:
            return
        terms = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("loss"))
        print(f"[{self.name}] epoch {epoch + 1}/{self.total} {terms} val_top1={row['val_top1']:.4f} "
              f"lr={row['lr']:.4g} ({row['epoch_s']:.1f}s)", file=sys.stderr, flush=True)


def _optimizer(distiller, cfg: RunConfig) -> SGD:
    r = cfg.recipe
    return SGD(distiller.param_groups(r["weight_decay"]), lr=cfg.lr, momentum=r["momentum"],
               nesterov=r["nesterov"], weight_decay=r["weight_decay"])


def _epoch_lr(epoch: int, cfg: RunConfig) -> float:
    r = cfg.recipe
    return learning_rate(epoch, base_lr=cfg.lr, schedule=r["schedule"], epochs=r["epochs"],
                         milestones=r["milestones"], gamma=r["gamma"])


def _load_checkpoint(path: Path, cfg: RunConfig) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        state = kio.load_torch(path)
    except Exception as err:  # truncated / corrupt file: start afresh, never a crash loop
        print(f"[kdbench] checkpoint {path} is unreadable ({type(err).__name__}: {err}); starting afresh",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        return None
    if state.get("config_hash") != cfg.config_hash:
        print(f"[kdbench] checkpoint {path} belongs to another config; starting afresh", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        return None
    return state


def _history_csv(rows: List[dict]) -> str:
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run(cfg: RunConfig, out_dir: Path, *, results_dir: Path, teacher_path: Optional[Path] = None,
        tracker=None, name: Optional[str] = None, max_epochs: Optional[int] = None,
        teacher_hash: Optional[str] = None, teacher_command: Optional[str] = None) -> dict:
    """Train one model. ``max_epochs`` stops early after that many epochs of this call
    (used by tests to simulate an interrupted job). ``teacher_hash``: the config hash the
    teacher's ``model.pt`` must carry (the one the student's profile implies); another one
    is refused. ``teacher_command``: the complete command that trains that teacher."""
    from kdbench.data.cache import load_dataset
    from kdbench.data.loader import make_loader
    from kdbench.data.sampling import few_shot
    from kdbench.methods import TrainContext

    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"{cfg.dataset}/{cfg.teacher + '->' if cfg.teacher else ''}{cfg.arch}/{cfg.method}/s{cfg.seed}"
    set_threads(cfg.threads)
    set_deterministic()
    device = select_device(cfg.device)
    r = cfg.recipe
    world = kdist.current()  # None: one process (torchrun jobs: kdbench.engine.distributed)
    main = world is None or world.is_main
    if not main:
        tracker = None  # rank 0 alone writes checkpoints, outputs and the MLflow record
    if world is not None:
        world.check_batch_size(r["batch_size"], "batch_size")  # before any work

    ds = load_dataset(cfg.dataset, cfg.dataset_options, results_dir)
    if cfg.trial is not None:  # a tuning trial: the test splits are held out (reading one raises)
        from kdbench.tuning import validation_only

        ds = validation_only(ds)
    train_split = ds.splits["train"]
    if cfg.kind == "student" and r.get("student_shots"):
        train_split = few_shot(train_split, r["student_shots"], seed=SHOTS_SEED)

    teacher = None
    if cfg.teacher is not None:
        train_it = teacher_command or (f"kdbench train-teacher --params PARAMS --dataset {cfg.dataset} "
                                       f"--arch {cfg.teacher} --seed {cfg.teacher_seed}")
        if teacher_path is None or not Path(teacher_path).is_file():
            raise KDBenchError(f"teacher model {teacher_path} not found: train it first: {train_it}")
        try:
            teacher, tmeta = load_model(Path(teacher_path), device)
        except Exception as err:
            raise KDBenchError(f"teacher model {teacher_path} is unreadable ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200]}): train it again: {train_it} --force") from None
        if tmeta["arch"] != cfg.teacher or tmeta["num_classes"] != ds.num_classes:
            raise KDBenchError(f"{teacher_path} holds a {tmeta['arch']} for {tmeta['num_classes']} classes, "
                               f"expected {cfg.teacher} for {ds.num_classes}: train it again: {train_it} --force")
        if teacher_hash is not None and tmeta.get("config_hash") != teacher_hash:
            raise KDBenchError(
                f"teacher model {teacher_path} was trained with another config (hash {tmeta.get('config_hash')}, "
                f"this profile's teacher is {teacher_hash}: another profile or an edited teacher_train?); "
                f"train this profile's teacher: {train_it}")

    seed_everything(cfg.seed)
    distiller = build_distiller(cfg, ds.num_classes, ds.image_size, teacher).to(device)
    if cfg.channels_last and device.type == "cuda":
        distiller = distiller.to(memory_format=torch.channels_last)

    def loader_for(split, batch_size, train, aligned=None, **options):
        return make_loader(ds, split, batch_size, train=train, seed=cfg.seed, device=device, aligned=aligned,
                           **options)

    ctx = TrainContext(dataset=ds, train_split=train_split, device=device, batch_size=r["batch_size"],
                       seed=cfg.seed, make_loader=loader_for,
                       info={"teacher_path": None if teacher_path is None else Path(teacher_path)})
    distiller.prepare(ctx)
    aligned = distiller.aligned_tensors() or None
    if world is None:
        train_loader = loader_for(train_split, r["batch_size"], True, aligned, **distiller.loader_options())
    else:  # this rank's slice of every global batch; BN over the global batch
        world.check_batch_size(min(r["batch_size"], len(train_split)), "batch_size")
        train_loader = loader_for(train_split, r["batch_size"], True, aligned, shard=(world.rank, world.size),
                                  **distiller.loader_options())
        kdist.convert_batchnorm(distiller, cuda=device.type == "cuda", skip=distiller.teacher)
    if len(train_loader) == 0:
        raise KDBenchError(f"batch_size {r['batch_size']} is larger than the {len(train_split)} training images")
    optimizer = _optimizer(distiller, cfg)

    ckpt_path = out_dir / CHECKPOINT
    history: List[dict] = []
    n_images = 0  # training images seen over all epochs, this call's and restored ones
    start_epoch = 0
    train_time = 0.0
    best_state, best_epoch, best_val = None, -1, -1.0
    state = _load_checkpoint(ckpt_path, cfg)
    if state is not None and int(state.get("world_size", 1)) != (1 if world is None else world.size):
        raise kdist.DistributedError(
            f"checkpoint {ckpt_path} was written by a job of {int(state.get('world_size', 1))} process(es); "
            f"resume it with the same number (this job has {1 if world is None else world.size}), "
            f"or delete the checkpoint to start afresh")
    if state is not None:
        distiller.load_trainable_state(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
        for row in history:  # stored as float64 rows: the epoch number is an integer again
            row["epoch"] = int(row["epoch"])
        start_epoch, train_time = int(state["epoch"]) + 1, float(state["train_s"])
        n_images = int(state.get("n_images", -1))
        best_state, best_epoch = state["best_state"], int(state["best_epoch"])
        best_val = history[best_epoch]["val_top1"]
        print(f"[{name}] resuming after epoch {start_epoch}", file=sys.stderr, flush=True)

    if tracker is not None:
        from kdbench.tracking import git_commit

        tracker.start(name, {"config": cfg.to_dict(), "config_hash": cfg.config_hash,
                             "dataset_fingerprint": ds.fingerprint, "git_commit": git_commit()},
                      tags={"kind": cfg.kind, "method": cfg.method, "dataset": cfg.dataset})
        for row in history:  # epochs restored from a checkpoint belong to this run too
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" and device.type == "cuda"
                else nullcontext())
    progress = Progress(r["epochs"], len(train_loader), name, enabled=main)
    predict = distiller.predict
    loss_fn = distiller.loss
    if cfg.compile and device.type == "cuda":  # opt-in; CPU runs stay eager (bit-identical)
        loss_fn = torch.compile(distiller.loss)
    trained = kdist.trained_parameters(optimizer) if world is not None else None
    end_epoch = r["epochs"] if max_epochs is None else min(r["epochs"], start_epoch + max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        lr = _epoch_lr(epoch, cfg)
        optimizer.set_lr(lr)
        distiller.train()
        distiller.on_epoch_start(epoch)
        train_loader.set_epoch(epoch)
        progress.epoch_start(epoch)
        sums: Dict[str, torch.Tensor] = {}
        steps = 0
        for step, batch in enumerate(train_loader):
            with autocast:
                try:
                    terms = loss_fn(batch)
                except torch.linalg.LinAlgError as err:  # e.g. an SVD of features gone to inf/nan
                    if "non-finite" not in str(err):
                        raise
                    raise NonFiniteLossError(epoch + 1, step + 1, {"loss": f"non-finite input ({err})"}) from err
            total = sum(terms.values())
            if not bool(torch.isfinite(total)):
                raise NonFiniteLossError(epoch + 1, step + 1, {k: float(v) for k, v in terms.items()})
            optimizer.zero_grad()
            total.backward()
            if world is not None:
                world.average_gradients(trained)
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            steps += 1
            if n_images >= 0:
                n_images += batch["label"].shape[0] * (1 if world is None else world.size)
            progress.step()
        if world is not None:
            distiller.sync_state(world)
            sums = _mean_over_ranks(sums, world)
        distiller.on_epoch_end(epoch)
        epoch_train_s = time.time() - t0
        train_time += epoch_train_s
        distiller.eval()
        val_top1 = accuracy(predict_split(predict, ds, "val", device, r["eval_batch_size"]), ds.splits["val"].labels)
        row = {"epoch": epoch + 1, **{f"loss_{k}": float(v) / steps for k, v in sums.items()},
               "loss": float(sum(sums.values())) / steps, "val_top1": val_top1,
               "lr": lr, "epoch_s": time.time() - t0}
        history.append(row)
        if val_top1 > best_val:  # model selection on the validation split only; ties: earliest
            best_val, best_epoch = val_top1, epoch
            best_state = {k: v.detach().clone() for k, v in distiller.trainable_state().items()}
        keys = list(row)
        if main:
            kio.save_torch({"epoch": epoch, "config_hash": cfg.config_hash,
                            "world_size": 1 if world is None else world.size, "distiller": distiller.trainable_state(),
                            "best_state": best_state, "best_epoch": best_epoch,
                            "optimizer": optimizer.state_dict(),
                            "rng": rng_state(), "train_s": train_time, "n_images": n_images,
                            "history_keys": keys,
                            "history": torch.tensor([[float(h.get(k, math.nan)) for k in keys] for h in history],
                                                    dtype=torch.float64)}, ckpt_path)
        progress.epoch_end(epoch, row)
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)

    if end_epoch < r["epochs"]:
        return {"interrupted_after_epoch": end_epoch}
    if not main:  # the other ranks wait until rank 0 has written the outputs
        world.barrier()
        return {"rank": world.rank}

    # ---- final outputs
    distiller.eval()
    last = history[-1]
    if cfg.trial is not None:
        metrics = _finish_trial(cfg, out_dir, history, best_epoch, train_time, t_start, ds, tracker)
        if world is not None:
            world.barrier()
        return metrics

    def test_accuracy() -> float:
        return accuracy(predict_split(predict, ds, "test", device, r["eval_batch_size"]), ds.splits["test"].labels)

    test_logits = split_logits(predict, ds, "test", device, r["eval_batch_size"])
    top1 = accuracy(test_logits.argmax(1), ds.splits["test"].labels)
    calib = calibration(test_logits, ds.splits["test"].labels)  # the last model, like top1
    if best_epoch == len(history) - 1:
        top1_sel = top1
    else:
        last_state = {k: v.detach().clone() for k, v in distiller.trainable_state().items()}
        distiller.load_trainable_state(best_state)
        top1_sel = test_accuracy()
        distiller.load_trainable_state(last_state)
    metrics = {
        "kind": cfg.kind, "dataset": cfg.dataset, "arch": cfg.arch, "student": cfg.arch,
        "teacher": cfg.teacher, "method": cfg.method, "seed": cfg.seed, "teacher_seed": cfg.teacher_seed,
        "epochs": r["epochs"], "top1": top1, "top1_sel": top1_sel,
        "best_epoch": best_epoch + 1, "val_top1": last["val_top1"], "top1_ood": None,
        "train_s": train_time, "wall_s": time.time() - t_start,
        # checkpoints of older versions did not count images: no rate then
        "train_img_s": (n_images / train_time) if n_images >= 0 and train_time > 0 else None,
        "params": sum(p.numel() for p in distiller.student.parameters()),
        "n_train": len(train_split), "config_hash": cfg.config_hash, "dataset_fingerprint": ds.fingerprint,
        "device": str(device), "hparams": cfg.hparams, "hparams_source": cfg.hparams_source, **calib,
    }
    if "test_ood" in ds.splits:
        split = ds.splits["test_ood"]
        metrics["top1_ood"] = ood_score(ds, predict_split(predict, ds, split, device, r["eval_batch_size"]), split)
    save_model(out_dir / "model.pt", distiller, cfg, ds.num_classes, {"input_size": ds.image_size})
    seal(out_dir / "model.pt")  # size + SHA-256, checked before the pipeline's next DAG (kdbench.integrity)
    kio.write_text(_history_csv(history), out_dir / "history.csv")
    kio.write_json(distiller.artifacts(), out_dir / "artifacts.json")
    kio.write_json(metrics, out_dir / "metrics.json")
    seal(out_dir / "metrics.json")
    ckpt_path.unlink(missing_ok=True)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_artifacts([out_dir / "metrics.json", out_dir / "history.csv", out_dir / "artifacts.json"])
        tracker.finish()
    if world is not None:
        world.barrier()
    return metrics


def _mean_over_ranks(sums: Dict[str, torch.Tensor], world) -> Dict[str, torch.Tensor]:
    """The epoch's summed loss terms averaged over the ranks (the logged loss is the
    global batch's)."""
    if not sums:
        return sums
    keys = list(sums)
    flat = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).reshape(()) for k in keys])
    world.all_reduce_sum(flat)
    return {k: v / world.size for k, v in zip(keys, flat)}


def _finish_trial(cfg: RunConfig, out_dir: Path, history: List[dict], best_epoch: int, train_time: float,
                  t_start: float, ds, tracker) -> dict:
    """A tuning trial's outputs: its validation accuracies (last epoch: the selection
    score; best epoch) and history; no model, no test split."""
    metrics = trial_metrics(cfg, val_top1=history[-1]["val_top1"], val_top1_best=history[best_epoch]["val_top1"],
                            best_epoch=best_epoch + 1, train_s=train_time, wall_s=time.time() - t_start,
                            dataset_fingerprint=ds.fingerprint)
    kio.write_text(_history_csv(history), out_dir / "history.csv")
    kio.write_json(metrics, out_dir / "metrics.json")
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    if tracker is not None:
        tracker.finish()
    return metrics


def trial_metrics(cfg: RunConfig, **values) -> dict:
    return {"kind": "trial", "dataset": cfg.dataset, "student": cfg.arch, "teacher": cfg.teacher,
            "method": cfg.method, "seed": cfg.seed, "trial": cfg.trial, "epochs": cfg.recipe["epochs"],
            "hparams": cfg.hparams, "hparams_source": cfg.hparams_source, "config_hash": cfg.config_hash,
            "diverged": False, **values}
