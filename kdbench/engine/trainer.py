"""The training loop shared by teachers (method ``vanilla``) and students (any method).

One call of :func:`run` is one job (a :class:`Trainer` in named phases: setup, resume,
the epochs, finish): it resumes from ``checkpoint.pt`` when one exists for
the same config, checkpoints atomically at the end of every epoch, selects the best epoch
on the validation split only (the test split is scored twice, at the end: the last
epoch's model and the best-validation epoch's model, kept in memory and in the
checkpoint), and writes ``model.pt``, ``history.csv``, ``artifacts.json``
and, last, ``metrics.json`` — each atomically, so a killed job leaves no half result.

Model files are read and written by :mod:`kdbench.engine.model_io`; predictions, accuracy
and calibration come from :mod:`kdbench.evaluation` (which never imports the trainer).
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from kdbench.config import layout
from kdbench import io as kio
from kdbench.config import RunConfig
from kdbench.data.cache import load_dataset
from kdbench.data.loader import make_loader
from kdbench.data.sampling import few_shot
from kdbench.data.splits import validation_only
from kdbench.engine import distributed as kdist
from kdbench.engine.model_io import build_distiller, load_model, save_model
from kdbench.engine.runtime import (provenance, rng_state, seed_everything, select_device, set_deterministic,
                                    set_rng_state, set_threads)
from kdbench.errors import KDBenchError
from kdbench.evaluation.accuracy import accuracy, calibration, ood_score
from kdbench.evaluation.predict import predict_split, split_logits
from kdbench.integrity import seal
from kdbench.methods import TrainContext
from kdbench.optim import PER_STEP_SCHEDULES, SGD, learning_rate
from kdbench.tracking import git_commit

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


# ------------------------------------------------------------------------ the job
class Progress:
    """A tqdm bar on interactive terminals, one line per epoch in logs."""

    def __init__(self, total_epochs: int, steps: int, name: str, enabled: bool = True):
        self.interactive = sys.stderr.isatty() and enabled
        self.total, self.steps, self.name = total_epochs, steps, name
        self.bar, self.enabled = None, enabled

    def epoch_start(self, epoch: int):
        if self.interactive:
            from tqdm import tqdm  # only for a terminal: a logged job never imports it

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


def _epoch_lr(epoch: int, cfg: RunConfig, step: int = 0, steps_per_epoch: int = 0) -> float:
    """The lr of ``epoch`` (per-epoch schedules) or of its optimiser step ``step``
    (``onecycle``: counted over the whole run's epochs x steps_per_epoch steps)."""
    r = cfg.recipe
    if r["schedule"] in PER_STEP_SCHEDULES:
        return learning_rate(epoch * steps_per_epoch + step, base_lr=cfg.lr, schedule=r["schedule"],
                             epochs=r["epochs"], total_steps=r["epochs"] * steps_per_epoch)
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


@dataclass
class TrainState:
    """What the epochs change and a checkpoint keeps (restored on resume)."""

    history: List[dict] = field(default_factory=list)
    start_epoch: int = 0
    train_time: float = 0.0
    n_images: int = 0  # training images seen over all epochs, this call's and restored ones
    best_state: Optional[dict] = None
    best_epoch: int = -1
    best_val: float = -1.0


class Trainer:
    """One training job in named phases (mdistiller's train / train_epoch / train_iter
    split): setup (the constructor: process, data, teacher, model), :meth:`resume`,
    :meth:`start_tracking`, :meth:`train` (one :meth:`train_epoch` per epoch, each
    :meth:`train_iter` per batch, then :meth:`validate` and :meth:`save_checkpoint`) and
    :meth:`finish` (the test scores and the outputs). :func:`run` calls them in order."""

    def __init__(self, cfg: RunConfig, out_dir: Path, *, results_dir: Path, teacher_path: Optional[Path] = None,
                 tracker=None, name: Optional[str] = None, teacher_hash: Optional[str] = None,
                 teacher_command: Optional[str] = None):
        self.t_start = time.time()
        self.cfg, self.r = cfg, cfg.recipe
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out_dir / CHECKPOINT
        self.name = name or (f"{cfg.dataset}/{cfg.teacher + '->' if cfg.teacher else ''}{cfg.arch}/"
                             f"{cfg.method}/s{cfg.seed}")
        self.teacher_path = teacher_path
        self.state = TrainState()
        self._setup_process(tracker)
        self._setup_data(results_dir)
        teacher = self._load_teacher(teacher_hash, teacher_command) if cfg.teacher is not None else None
        self._setup_model(teacher)

    # ------------------------------------------------------------------ setup
    @property
    def world_size(self) -> int:
        return 1 if self.world is None else self.world.size

    def _setup_process(self, tracker) -> None:
        set_threads(self.cfg.threads)
        set_deterministic()
        self.device = select_device(self.cfg.device)
        self.world = kdist.current()  # None: one process (torchrun jobs: kdbench.engine.distributed)
        self.main = self.world is None or self.world.is_main
        # rank 0 alone writes checkpoints, outputs and the MLflow record
        self.tracker = tracker if self.main else None
        if self.world is not None:
            self.world.check_batch_size(self.r["batch_size"], "batch_size")  # before any work

    def _setup_data(self, results_dir: Path) -> None:
        cfg = self.cfg
        self.ds = load_dataset(cfg.dataset, cfg.dataset_options, results_dir)
        if cfg.trial is not None:  # a tuning trial: the test splits are held out (reading one raises)
            self.ds = validation_only(self.ds)
        self.train_split = self.ds.splits["train"]
        # a tuning trial never scores the test split, whatever the recipe says
        self.test_each_epoch = bool(self.r.get("test_every_epoch")) and cfg.trial is None
        if cfg.kind == "student" and self.r.get("student_shots"):
            self.train_split = few_shot(self.train_split, self.r["student_shots"], seed=SHOTS_SEED)

    def _load_teacher(self, teacher_hash: Optional[str], teacher_command: Optional[str]):
        """The teacher's network, after checking that its file exists, loads, fits the
        student's dataset and (``teacher_hash``) was trained with the expected config."""
        cfg, path, ds = self.cfg, self.teacher_path, self.ds
        train_it = teacher_command or (f"kdbench train-teacher --params PARAMS --dataset {cfg.dataset} "
                                       f"--arch {cfg.teacher} --seed {cfg.teacher_seed}")
        if path is None or not Path(path).is_file():
            raise KDBenchError(f"teacher model {path} not found: train it first: {train_it}")
        try:
            teacher, tmeta = load_model(Path(path), self.device)
        except Exception as err:
            raise KDBenchError(f"teacher model {path} is unreadable ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200]}): train it again: {train_it} --force") from None
        if tmeta["arch"] != cfg.teacher or tmeta["num_classes"] != ds.num_classes:
            raise KDBenchError(f"{path} holds a {tmeta['arch']} for {tmeta['num_classes']} classes, "
                               f"expected {cfg.teacher} for {ds.num_classes}: train it again: {train_it} --force")
        if teacher_hash is not None and tmeta.get("config_hash") != teacher_hash:
            raise KDBenchError(
                f"teacher model {path} was trained with another config (hash {tmeta.get('config_hash')}, "
                f"this profile's teacher is {teacher_hash}: another profile or an edited teacher_train?); "
                f"train this profile's teacher: {train_it}")
        return teacher

    def _setup_model(self, teacher) -> None:
        cfg, r, device = self.cfg, self.r, self.device
        seed_everything(cfg.seed)
        distiller = build_distiller(cfg, self.ds.num_classes, self.ds.image_size, teacher).to(device)
        if cfg.channels_last and device.type == "cuda":
            distiller = distiller.to(memory_format=torch.channels_last)
        self.distiller = distiller
        info = {"teacher_path": None if self.teacher_path is None else Path(self.teacher_path)}
        distiller.prepare(TrainContext(dataset=self.ds, train_split=self.train_split, device=device,
                                       batch_size=r["batch_size"], seed=cfg.seed, make_loader=self._loader, info=info))
        self.train_loader = self._train_loader()
        self.optimizer = _optimizer(distiller, cfg)

    def _loader(self, split, batch_size, train, aligned=None, **options):
        return make_loader(self.ds, split, batch_size, train=train, seed=self.cfg.seed, device=self.device,
                           aligned=aligned, **options)

    def _train_loader(self):
        r, world, d = self.r, self.world, self.distiller
        aligned = d.aligned_tensors() or None
        if world is None:
            loader = self._loader(self.train_split, r["batch_size"], True, aligned, **d.loader_options())
        else:  # this rank's slice of every global batch; BN over the global batch
            world.check_batch_size(min(r["batch_size"], len(self.train_split)), "batch_size")
            loader = self._loader(self.train_split, r["batch_size"], True, aligned, shard=(world.rank, world.size),
                                  **d.loader_options())
            kdist.convert_batchnorm(d, cuda=self.device.type == "cuda", skip=d.teacher)
        if len(loader) == 0:
            raise KDBenchError(f"batch_size {r['batch_size']} is larger than the {len(self.train_split)} "
                               f"training images")
        return loader

    # ------------------------------------------------------------------ resume, tracking
    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when one exists for this config (and as many
        processes); a missing, unreadable or foreign one means a fresh start."""
        state = _load_checkpoint(self.ckpt_path, self.cfg)
        if state is None:
            return
        if int(state.get("world_size", 1)) != self.world_size:
            raise kdist.DistributedError(
                f"checkpoint {self.ckpt_path} was written by a job of {int(state.get('world_size', 1))} process(es); "
                f"resume it with the same number (this job has {self.world_size}), "
                f"or delete the checkpoint to start afresh")
        self.distiller.load_trainable_state(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
        for row in history:  # stored as float64 rows: the epoch number is an integer again
            row["epoch"] = int(row["epoch"])
        s = self.state
        s.history = history
        s.start_epoch, s.train_time = int(state["epoch"]) + 1, float(state["train_s"])
        s.n_images = int(state.get("n_images", -1))
        s.best_state, s.best_epoch = state["best_state"], int(state["best_epoch"])
        s.best_val = history[s.best_epoch]["val_top1"]
        print(f"[{self.name}] resuming after epoch {s.start_epoch}", file=sys.stderr, flush=True)

    def start_tracking(self) -> None:
        if self.tracker is None:
            return
        cfg = self.cfg
        self.tracker.start(self.name, {"config": cfg.to_dict(), "config_hash": cfg.config_hash,
                                       "dataset_fingerprint": self.ds.fingerprint, "git_commit": git_commit()},
                           tags={"kind": cfg.kind, "method": cfg.method, "dataset": cfg.dataset})
        for row in self.state.history:  # epochs restored from a checkpoint belong to this run too
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    # ------------------------------------------------------------------ the epochs
    def train(self, max_epochs: Optional[int] = None) -> int:
        """Train from the resumed epoch on; ``max_epochs`` stops after that many epochs of
        this call. Returns the epoch count reached."""
        cfg, r, device = self.cfg, self.r, self.device
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if cfg.precision == "bf16" and device.type == "cuda" else nullcontext())
        self.progress = Progress(r["epochs"], len(self.train_loader), self.name, enabled=self.main)
        self.loss_fn = self.distiller.loss
        if cfg.compile and device.type == "cuda":  # opt-in; CPU runs stay eager (bit-identical)
            self.loss_fn = torch.compile(self.distiller.loss)
        self.trained = kdist.trained_parameters(self.optimizer) if self.world is not None else None
        start = self.state.start_epoch
        end_epoch = r["epochs"] if max_epochs is None else min(r["epochs"], start + max_epochs)
        for epoch in range(start, end_epoch):
            self.train_epoch(epoch)
        return end_epoch

    def train_epoch(self, epoch: int) -> None:
        """One epoch: the training steps, the validation, the checkpoint, the log line."""
        t0 = time.time()
        lr = _epoch_lr(epoch, self.cfg, 0, len(self.train_loader))
        self.optimizer.set_lr(lr)
        d, world = self.distiller, self.world
        d.train()
        d.on_epoch_start(epoch)
        self.train_loader.set_epoch(epoch)
        self.progress.epoch_start(epoch)
        sums: Dict[str, torch.Tensor] = {}
        steps = 0
        for step, batch in enumerate(self.train_loader):
            self.train_iter(epoch, step, batch, sums)
            steps += 1
        if world is not None:
            d.sync_state(world)
            sums = _mean_over_ranks(sums, world)
        d.on_epoch_end(epoch)
        self.state.train_time += time.time() - t0
        row = self.validate(epoch, sums, steps, lr, t0)
        if self.main:
            self.save_checkpoint(epoch, list(row))
        self.progress.epoch_end(epoch, row)
        if self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)

    def train_iter(self, epoch: int, step: int, batch: dict, sums: Dict[str, torch.Tensor]) -> None:
        """One optimiser step on one batch; its loss terms are added to ``sums``."""
        if step and self.r["schedule"] in PER_STEP_SCHEDULES:
            self.optimizer.set_lr(_epoch_lr(epoch, self.cfg, step, len(self.train_loader)))
        with self.autocast:
            try:
                terms = self.loss_fn(batch)
            except torch.linalg.LinAlgError as err:  # e.g. an SVD of features gone to inf/nan
                if "non-finite" not in str(err):
                    raise
                raise NonFiniteLossError(epoch + 1, step + 1, {"loss": f"non-finite input ({err})"}) from err
        total = sum(terms.values())
        if not bool(torch.isfinite(total)):
            raise NonFiniteLossError(epoch + 1, step + 1, {k: float(v) for k, v in terms.items()})
        self.optimizer.zero_grad()
        total.backward()
        if self.world is not None:
            self.world.average_gradients(self.trained)
        self.optimizer.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach()
        if self.state.n_images >= 0:
            self.state.n_images += batch["label"].shape[0] * self.world_size
        self.progress.step()

    def validate(self, epoch: int, sums: Dict[str, torch.Tensor], steps: int, lr: float, t0: float) -> dict:
        """The epoch's history row (mean loss terms, validation top-1 and, with
        ``test_every_epoch``, test top-1); the best epoch so far is selected on the
        validation split only (ties: the earliest), the test top-1 is only recorded."""
        d, ds, s = self.distiller, self.ds, self.state
        d.eval()
        val_top1 = accuracy(predict_split(d.predict, ds, "val", self.device, self.r["eval_batch_size"]),
                            ds.splits["val"].labels)
        row = {"epoch": epoch + 1, **{f"loss_{k}": float(v) / steps for k, v in sums.items()},
               "loss": float(sum(sums.values())) / steps, "val_top1": val_top1}
        if self.test_each_epoch:
            row["test_top1"] = self._test_top1()
        row.update(lr=lr, epoch_s=time.time() - t0)
        s.history.append(row)
        if val_top1 > s.best_val:
            s.best_val, s.best_epoch = val_top1, epoch
            s.best_state = {k: v.detach().clone() for k, v in d.trainable_state().items()}
        return row

    def save_checkpoint(self, epoch: int, keys: List[str]) -> None:
        """Everything :meth:`resume` needs, written atomically (the history as float64
        rows of ``keys``)."""
        s = self.state
        kio.save_torch({"epoch": epoch, "config_hash": self.cfg.config_hash,
                        "world_size": self.world_size, "distiller": self.distiller.trainable_state(),
                        "best_state": s.best_state, "best_epoch": s.best_epoch,
                        "optimizer": self.optimizer.state_dict(),
                        "rng": rng_state(), "train_s": s.train_time, "n_images": s.n_images,
                        "history_keys": keys,
                        "history": torch.tensor([[float(h.get(k, math.nan)) for k in keys] for h in s.history],
                                                dtype=torch.float64)}, self.ckpt_path)

    # ------------------------------------------------------------------ finish
    def finish(self, end_epoch: int) -> dict:
        """The job's result: interrupted, another rank's, a trial's, or the test scores
        with every output written."""
        world = self.world
        if end_epoch < self.r["epochs"]:
            return {"interrupted_after_epoch": end_epoch}
        if not self.main:  # the other ranks wait until rank 0 has written the outputs
            world.barrier()
            return {"rank": world.rank}
        self.distiller.eval()
        s = self.state
        if self.cfg.trial is not None:
            metrics = _finish_trial(self.cfg, self.out_dir, s.history, s.best_epoch, s.train_time, self.t_start,
                                    self.ds, self.tracker, provenance(self.cfg, self.device, self.world_size))
        else:
            metrics = self.test_metrics()
            self.write_outputs(metrics)
        if world is not None:
            world.barrier()
        return metrics

    def _test_top1(self) -> float:
        ds = self.ds
        return accuracy(predict_split(self.distiller.predict, ds, "test", self.device, self.r["eval_batch_size"]),
                        ds.splits["test"].labels)

    def _best_epoch_test_top1(self) -> float:
        """The test top-1 of the best-validation epoch's model (the last one restored after)."""
        d = self.distiller
        last_state = {k: v.detach().clone() for k, v in d.trainable_state().items()}
        d.load_trainable_state(self.state.best_state)
        top1_sel = self._test_top1()
        d.load_trainable_state(last_state)
        return top1_sel

    def test_metrics(self) -> dict:
        """``metrics.json``: the last model's test top-1 and calibration, the selected
        (best-validation) epoch's test top-1, the OOD score, the costs and the identity."""
        cfg, r, ds, s, device = self.cfg, self.r, self.ds, self.state, self.device
        predict = self.distiller.predict
        test_logits = split_logits(predict, ds, "test", device, r["eval_batch_size"])
        top1 = accuracy(test_logits.argmax(1), ds.splits["test"].labels)
        calib = calibration(test_logits, ds.splits["test"].labels)  # the last model, like top1
        top1_sel = top1 if s.best_epoch == len(s.history) - 1 else self._best_epoch_test_top1()
        n_images, train_time = s.n_images, s.train_time
        metrics = {
            "kind": cfg.kind, "dataset": cfg.dataset, "arch": cfg.arch, "student": cfg.arch,
            "teacher": cfg.teacher, "method": cfg.method, "seed": cfg.seed, "teacher_seed": cfg.teacher_seed,
            "epochs": r["epochs"], "top1": top1, "top1_sel": top1_sel,
            "best_epoch": s.best_epoch + 1, "val_top1": s.history[-1]["val_top1"], "top1_ood": None,
            "train_s": train_time, "wall_s": time.time() - self.t_start,
            # checkpoints of older versions did not count images: no rate then
            "train_img_s": (n_images / train_time) if n_images >= 0 and train_time > 0 else None,
            "params": sum(p.numel() for p in self.distiller.student.parameters()),
            "n_train": len(self.train_split), "config_hash": cfg.config_hash, "dataset_fingerprint": ds.fingerprint,
            "device": str(device), "hparams": cfg.hparams, "hparams_source": cfg.hparams_source, **calib,
            **self.best_test(), "provenance": provenance(cfg, device, self.world_size),
        }
        if "test_ood" in ds.splits:
            split = ds.splits["test_ood"]
            metrics["top1_ood"] = ood_score(ds, predict_split(predict, ds, split, device, r["eval_batch_size"]), split)
        return metrics

    def best_test(self) -> dict:
        """``top1_best_test``: the max over epochs of the test top-1 (the like-for-like
        number for papers that select their epoch on the test split; never kdbench's
        selection or ranking metric) and its epoch; both None when the recipe's
        ``test_every_epoch`` is off (never a copy of the last epoch)."""
        scores = [h.get("test_top1") for h in self.state.history]
        if not self.test_each_epoch or not scores or any(v is None or math.isnan(v) for v in scores):
            return {"top1_best_test": None, "top1_best_test_epoch": None}
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))   # ties: the earliest
        return {"top1_best_test": scores[best], "top1_best_test_epoch": best + 1}

    def write_outputs(self, metrics: dict) -> None:
        """``model.pt``, ``history.csv``, ``artifacts.json`` and, last, ``metrics.json``
        (each atomically; the model and the metrics sealed); the checkpoint goes."""
        out, d, tracker = self.out_dir, self.distiller, self.tracker
        save_model(out / layout.MODEL, d, self.cfg, self.ds.num_classes, {"input_size": self.ds.image_size})
        seal(out / layout.MODEL)  # size + SHA-256, checked before the pipeline's next DAG (kdbench.integrity)
        kio.write_text(_history_csv(self.state.history), out / "history.csv")
        kio.write_json(d.artifacts(), out / "artifacts.json")
        kio.write_json(metrics, out / layout.METRICS)
        seal(out / layout.METRICS)
        self.ckpt_path.unlink(missing_ok=True)
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in metrics.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
            tracker.log_artifacts([out / layout.METRICS, out / "history.csv", out / "artifacts.json"])
            tracker.finish()


def run(cfg: RunConfig, out_dir: Path, *, results_dir: Path, teacher_path: Optional[Path] = None,
        tracker=None, name: Optional[str] = None, max_epochs: Optional[int] = None,
        teacher_hash: Optional[str] = None, teacher_command: Optional[str] = None) -> dict:
    """Train one model. ``max_epochs`` stops early after that many epochs of this call
    (used by tests to simulate an interrupted job). ``teacher_hash``: the config hash the
    teacher's ``model.pt`` must carry (the one the student's profile implies); another one
    is refused. ``teacher_command``: the complete command that trains that teacher."""
    job = Trainer(cfg, out_dir, results_dir=results_dir, teacher_path=teacher_path, tracker=tracker, name=name,
                  teacher_hash=teacher_hash, teacher_command=teacher_command)
    job.resume()
    job.start_tracking()
    end_epoch = job.train(max_epochs)
    return job.finish(end_epoch)


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
                  t_start: float, ds, tracker, prov: Optional[dict] = None) -> dict:
    """A tuning trial's outputs: its validation accuracies (last epoch: the selection
    score; best epoch) and history; no model, no test split."""
    metrics = trial_metrics(cfg, val_top1=history[-1]["val_top1"], val_top1_best=history[best_epoch]["val_top1"],
                            best_epoch=best_epoch + 1, train_s=train_time, wall_s=time.time() - t_start,
                            dataset_fingerprint=ds.fingerprint, provenance=prov)
    kio.write_text(_history_csv(history), out_dir / "history.csv")
    kio.write_json(metrics, out_dir / layout.METRICS)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    if tracker is not None:
        tracker.finish()
    return metrics


def trial_metrics(cfg: RunConfig, **values) -> dict:
    return {"kind": "trial", "dataset": cfg.dataset, "student": cfg.arch, "teacher": cfg.teacher,
            "method": cfg.method, "seed": cfg.seed, "trial": cfg.trial, "epochs": cfg.recipe["epochs"],
            "hparams": cfg.hparams, "hparams_source": cfg.hparams_source, "config_hash": cfg.config_hash,
            "diverged": False, **values}
