#!/usr/bin/env python
"""Everything CUDA-specific in kdbench, in one command: the first thing to run on a new GPU box.

    python scripts/gpu_check.py                     # on the GPU(s): resnet32x4 -> resnet8x4, 32 px, under 10 min
    python scripts/gpu_check.py --device cpu --tiny # the same checks on the CPU at toy sizes (tests/test_gpu_check.py)

On synthetic CIFAR-shaped data (random uint8 images, ``bench_cifar`` of scripts/bench_gpu.py:
no files needed), it checks, and prints one table row per check:

1. ``method``: every registered method, a few training steps (the trainer's step: the
   method's ``loss``, kdbench's SGD) in fp32 and in bf16 (autocast, CUDA only, as the
   engine): every loss term finite and the total loss lower at the last step than at the
   first; a checkpoint round trip (the trainable state, the optimizer and the RNG saved
   and loaded into a fresh distiller: its next step gives the same loss and parameters as
   the original's); the first fp32 steps against the CPU float64 path (same teacher,
   initial weights and batches) within ``TOL["float64"]``.
2. ``compile``: ``compile: true`` (torch.compile of the loss, CUDA only) against eager, for
   kd and at, through the real engine (``trainer.run``): history losses and test top-1.
3. ``ddp``: ``torchrun`` over all visible GPUs (gloo and 2 processes on the CPU) against
   one process with the same global batch, kd and cid (its prototypes: every tensor of
   ``model.pt``). On one GPU: n/a (kdbench puts one rank per GPU).
4. ``bench``: scripts/bench_gpu.py's figures (engine and bare-loop img/s, their ratio,
   the projected 240-epoch CIFAR-100 time).
5. ``evaluate``: the evaluation of one kd student (``kdbench.evaluation.run.evaluate_run``)
   on the device and on the CPU: every metric finite (or None on both) and equal within
   ``TOL["evaluate"]``.

Exits 1 if any check fails. ``--json FILE`` also writes the rows.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdbench.config import teacher_config  # noqa: E402
from kdbench.hparams import student_config
from kdbench.profile import validate_profile
from kdbench.engine import distributed as kdist  # noqa: E402
from kdbench import io as kio  # noqa: E402
from kdbench.engine import model_io, trainer  # noqa: E402
from kdbench.engine.runtime import (rng_state, seed_everything, select_device, set_deterministic,  # noqa: E402
                                    set_rng_state)
from kdbench.methods import TrainContext, get_method, iter_method_names  # noqa: E402


def _load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the synthetic dataset `bench_cifar`
    return module


bench_gpu = _load_bench_gpu()
DATASET = "bench_cifar"

#: the stated tolerances (relative to max(1, |reference|) where a value is compared)
TOL = {
    # first steps' total loss, device fp32 vs CPU float64 (CUDA convolutions run TF32 by
    # PyTorch's default: ~1e-3 relative per op; on the CPU the gap is ~1e-6)
    "float64": 1e-2,
    # bf16 autocast vs fp32: the first step's total loss
    "bf16": 5e-2,
    # the step after a checkpoint round trip vs the uninterrupted one (bit-identical on CPU)
    "checkpoint": 1e-6,
    # compile vs eager: history losses over the run; test top-1 may differ by one image
    "compile": 1e-3,
    # DDP vs one process: every tensor of model.pt (tests/test_distributed.py: 2e-5 on CPU)
    "ddp": 1e-3,
    # evaluation metrics, device vs CPU (an accuracy over 64 images moves by 1/64 per image)
    "evaluate": 2e-2,
}
#: methods that draw random numbers on the device in their loss (CRD's negatives): their
#: CUDA steps cannot be compared with a CPU run
DEVICE_RNG = {"crd"}


@dataclass(frozen=True)
class Sizes:
    teacher: str
    student: str
    image_size: int
    num_classes: int
    n_train: int
    batch_size: int
    steps: int           # training steps per method and precision
    ref_steps: int       # of which compared with the CPU float64 path
    engine_epochs: int   # trainer.run jobs (compile, ddp, evaluate)
    bench_args: tuple    # scripts/bench_gpu.py


FULL = Sizes("resnet32x4", "resnet8x4", 32, 100, n_train=1024, batch_size=64, steps=8, ref_steps=3,
             engine_epochs=2, bench_args=("--n-train", "20000", "--epochs", "2", "--batch-sizes", "64", "128"))
TINY = Sizes("resnet14", "resnet8", 16, 10, n_train=64, batch_size=16, steps=4, ref_steps=2, engine_epochs=2,
             bench_args=("--n-train", "64", "--epochs", "1", "--batch-sizes", "32", "--teacher", "resnet8",
                         "--student", "resnet8", "--image-size", "16", "--num-classes", "10"))


# ----------------------------------------------------------------------------- the table
@dataclass
class Row:
    section: str
    check: str
    status: str   # pass | FAIL | n/a
    detail: str


class Table:
    def __init__(self):
        self.rows: List[Row] = []

    def add(self, section: str, check: str, ok: Optional[bool], detail: str) -> None:
        status = "n/a" if ok is None else ("pass" if ok else "FAIL")
        self.rows.append(Row(section, check, status, detail))
        print(f"{section:<9} {check:<24} {status:<5} {detail}", flush=True)

    def guarded(self, section: str, check: str, fn) -> None:
        """``fn()`` returns (ok, detail); an exception is a failure with its first line."""
        try:
            ok, detail = fn()
        except Exception as err:  # a crash of one check must not hide the others
            ok, detail = False, f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        self.add(section, check, ok, detail)

    @property
    def failed(self) -> List[Row]:
        return [r for r in self.rows if r.status == "FAIL"]


def rel_gap(a: float, b: float) -> float:
    return abs(a - b) / max(1.0, abs(b))


# ----------------------------------------------------------------------------- the profile
def profile_for(sizes: Sizes, device: str, work: Path, **changes) -> dict:
    options = dict(n_train=sizes.n_train, n_val=sizes.batch_size, image_size=sizes.image_size,
                   num_classes=sizes.num_classes, seed=0)
    recipe = {"epochs": sizes.engine_epochs, "batch_size": sizes.batch_size, "lr": 0.001, "schedule": "cosine"}
    prof = {"results_dir": str(work / "results"), "datasets": {DATASET: options},
            "pairs": [{"teacher": sizes.teacher, "student": sizes.student}], "methods": ["vanilla"],
            "seeds": [0], "teacher_seed": 0, "teacher_train": dict(recipe), "student_train": dict(recipe),
            "device": device, "threads": 1, "tracking": {"enabled": False},
            # CRD's negatives per anchor: fewer than the training images
            "method_params": {"crd": {"nce_k": sizes.n_train // 2}}}
    prof.update(changes)
    return validate_profile(prof)


def make_teacher(prof: dict, sizes: Sizes, work: Path) -> Path:
    """A random-init teacher's model.pt (the checks do not depend on its accuracy)."""
    path = work / "teacher" / "model.pt"
    if not path.is_file():
        cfg = teacher_config(prof, DATASET, sizes.teacher, 0)
        seed_everything(0)
        d = model_io.build_distiller(cfg, sizes.num_classes, sizes.image_size)
        model_io.save_model(path, d, cfg, sizes.num_classes, {"input_size": sizes.image_size})
    return path


# ----------------------------------------------------------------------------- 1. methods
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class Stepper:
    """One method's training as the engine runs it (trainer.run's step), step by step:
    ``dtype`` float64 is the CPU reference path (every tensor created in float64)."""

    def __init__(self, prof: dict, sizes: Sizes, method: str, device: torch.device, teacher_path: Path,
                 precision: str = "fp32", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        self.batch_dtype = torch.float32  # prepare() runs in float32 (see below)
        self.cfg = replace(student_config(prof, DATASET, sizes.teacher, sizes.student, method, 0), precision=precision)
        self.ds = bench_gpu.bench_cifar(**prof["datasets"][DATASET])
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device.type == "cuda"
                         else contextlib.nullcontext())
        # built in float32 (the same initial weights and prepared state on every path),
        # then converted: the float64 path differs from the fp32 one only in precision
        teacher = None
        if get_method(method).needs_teacher:
            teacher, _ = model_io.load_model(teacher_path, device)
        seed_everything(0)
        self.distiller = model_io.build_distiller(self.cfg, sizes.num_classes, sizes.image_size, teacher).to(device)
        if self.cfg.channels_last and device.type == "cuda":
            self.distiller = self.distiller.to(memory_format=torch.channels_last)

        def loader_for(split, batch_size, train, aligned=None, **options):
            return CastLoader(trainer_loader(self.ds, split, batch_size, train, device, aligned, **options), self)

        ctx = TrainContext(dataset=self.ds, train_split=self.ds.splits["train"], device=device,
                           batch_size=sizes.batch_size, seed=0, make_loader=loader_for, info={"teacher_path": None})
        self.distiller.prepare(ctx)
        aligned = {k: v.to(dtype) if v.is_floating_point() else v
                   for k, v in (self.distiller.aligned_tensors() or {}).items()}
        self.loader = loader_for(self.ds.splits["train"], sizes.batch_size, True, aligned or None,
                                 **self.distiller.loader_options())
        if dtype != torch.float32:  # the float64 path: every floating tensor, also those kept
            self.distiller.to(dtype=dtype)  # by prepare() outside parameters and buffers
            self.batch_dtype = dtype
            for module in self.distiller.modules():
                for name, value in list(vars(module).items()):
                    if torch.is_tensor(value) and value.is_floating_point():
                        setattr(module, name, value.to(dtype))
        self.optimizer = trainer._optimizer(self.distiller, self.cfg)
        self.epoch, self.batches = -1, None

    def start_epoch(self) -> None:
        """What trainer.run does at an epoch's start."""
        self.epoch += 1
        self.optimizer.set_lr(trainer._epoch_lr(self.epoch, self.cfg))
        self.distiller.train()
        self.distiller.on_epoch_start(self.epoch)
        self.loader.set_epoch(self.epoch)
        self.batches = iter(self.loader)

    def next_batch(self) -> Optional[dict]:
        """The epoch's next batch (None at its end)."""
        if self.batches is None:
            self.start_epoch()
        return next(self.batches, None)

    def end_epoch(self) -> None:
        """The rest of the epoch's steps, then its end: where trainer.run checkpoints."""
        for batch in iter(self.next_batch, None):
            self.step(batch)
        self.distiller.on_epoch_end(self.epoch)
        self.batches = None

    def step(self, batch: dict) -> Dict[str, float]:
        with default_dtype(self.dtype):
            with self.autocast:
                terms = self.distiller.loss(batch)
            total = sum(terms.values())
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
        return {**{k: float(v.detach()) for k, v in terms.items()}, "total": float(total.detach())}

    def state(self) -> dict:
        """trainer.run's checkpoint at the end of ``self.epoch``."""
        return {"distiller": self.distiller.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(), "epoch": self.epoch}

    def load(self, state: dict) -> None:
        """trainer.run's resume: the checkpoint's state, then the next epoch starts."""
        self.distiller.load_trainable_state(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])


class CastLoader:
    """A loader whose batches' floating tensors are in its stepper's ``batch_dtype``."""

    def __init__(self, loader, stepper: Stepper):
        self.loader, self.stepper = loader, stepper

    def __iter__(self):
        for batch in self.loader:
            dtype = self.stepper.batch_dtype
            yield {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                   for k, v in batch.items()}

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def trainer_loader(ds, split, batch_size, train, device, aligned=None, **options):
    from kdbench.data.loader import make_loader

    return make_loader(ds, split, batch_size, train=train, seed=0, device=device, aligned=aligned, **options)


def run_steps(stepper: Stepper, n: int) -> List[Dict[str, float]]:
    """``n`` steps on the first batch (one fixed objective: its loss must go down)."""
    batch = stepper.next_batch()
    return [stepper.step(batch) for _ in range(n)]


def check_losses(losses: List[Dict[str, float]]) -> tuple:
    bad = [(i + 1, k, v) for i, row in enumerate(losses) for k, v in row.items() if not math.isfinite(v)]
    if bad:
        return False, f"non-finite: step {bad[0][0]} {bad[0][1]}={bad[0][2]}"
    first, last = losses[0]["total"], losses[-1]["total"]
    return last < first, f"loss {first:.4g} -> {last:.4g} over {len(losses)} steps on one batch"


def checkpoint_round_trip(make, stepper: Stepper, work: Path) -> tuple:
    """trainer.run's checkpoint at an epoch's end, saved and loaded into a fresh stepper:
    the next epoch's first step gives the same loss and parameters in both."""
    stepper.end_epoch()
    state = stepper.state()
    path = kio.save_torch(state, work / "checkpoint.pt")
    fresh = make()  # (it re-seeds the process's RNG: each side continues from the saved one)
    fresh.load(kio.load_torch(path))
    set_rng_state(state["rng"])
    after = stepper.step(stepper.next_batch())
    set_rng_state(state["rng"])
    again = fresh.step(fresh.next_batch())
    gap = max(rel_gap(again[k], after[k]) for k in after)
    mine, theirs = stepper.distiller.trainable_state(), fresh.distiller.trainable_state()
    pgap = max((float((mine[k].double() - theirs[k].double()).abs().max()) for k in mine if mine[k].numel()),
               default=0.0)
    ok = gap <= TOL["checkpoint"] and pgap <= TOL["checkpoint"]
    return ok, f"next step loss gap {gap:.1e}, parameters {pgap:.1e} (tol {TOL['checkpoint']:.0e})"


def check_method(table: Table, method: str, prof: dict, sizes: Sizes, device: torch.device, teacher: Path,
                 work: Path) -> None:
    def make(precision="fp32", dev=device, dtype=torch.float32):
        return Stepper(prof, sizes, method, dev, teacher, precision, dtype)

    fp32: Dict[str, List[dict]] = {}

    def fp32_steps():
        stepper = make()
        fp32["losses"] = run_steps(stepper, sizes.steps)
        fp32["stepper"] = stepper
        return check_losses(fp32["losses"])

    table.guarded(method, "fp32 steps", fp32_steps)
    if "stepper" in fp32:
        table.guarded(method, "checkpoint round trip", lambda: checkpoint_round_trip(make, fp32["stepper"], work))
    if device.type == "cuda":
        def bf16_steps():
            losses = run_steps(make("bf16"), sizes.steps)
            ok, detail = check_losses(losses)
            if "losses" in fp32:
                gap = rel_gap(losses[0]["total"], fp32["losses"][0]["total"])
                ok, detail = ok and gap <= TOL["bf16"], f"{detail}; step 1 vs fp32 {gap:.1e} (tol {TOL['bf16']:.0e})"
            return ok, detail

        table.guarded(method, "bf16 steps", bf16_steps)
    else:
        table.add(method, "bf16 steps", None, "the engine runs bf16 autocast on CUDA only")
    if device.type == "cuda" and method in DEVICE_RNG:
        table.add(method, "vs CPU float64", None, "draws its random numbers on the device")
    elif "losses" in fp32:
        def vs_float64():
            ref = run_steps(make(dev=torch.device("cpu"), dtype=torch.float64), sizes.ref_steps)
            gaps = [rel_gap(a["total"], b["total"]) for a, b in zip(fp32["losses"], ref)]
            return max(gaps) <= TOL["float64"], (f"first {len(gaps)} steps: max gap {max(gaps):.1e} "
                                                 f"(tol {TOL['float64']:.0e})")

        table.guarded(method, "vs CPU float64", vs_float64)


# ----------------------------------------------------------------------------- engine runs
def engine_run(prof: dict, sizes: Sizes, method: str, work: Path, name: str, teacher: Path) -> Path:
    cfg = student_config(prof, DATASET, sizes.teacher, sizes.student, method, 0)
    out = work / name / method
    trainer.run(cfg, out, results_dir=Path(prof["results_dir"]), teacher_path=teacher)
    return out


def history_losses(run_dir: Path) -> List[float]:
    return [float(r["loss"]) for r in csv.DictReader((run_dir / "history.csv").open())]


def check_compile(table: Table, prof: dict, sizes: Sizes, device: torch.device, teacher: Path, work: Path) -> None:
    compiled = dict(prof, compile=True)
    for method in ("kd", "at"):
        def compare(method=method):
            eager = engine_run(prof, sizes, method, work, "eager", teacher)
            comp = engine_run(compiled, sizes, method, work, "compiled", teacher)
            gap = max(rel_gap(a, b) for a, b in zip(history_losses(comp), history_losses(eager)))
            top = [json.loads((d / "metrics.json").read_text())["top1"] for d in (comp, eager)]
            one_image = 1.0 / prof["datasets"][DATASET]["n_val"] + 1e-9
            ok = gap <= TOL["compile"] and abs(top[0] - top[1]) <= one_image
            where = "" if device.type == "cuda" else " (CPU: both eager, kdbench compiles on CUDA only)"
            return ok, f"history loss gap {gap:.1e} (tol {TOL['compile']:.0e}), top1 {top[0]:.4f} vs {top[1]:.4f}{where}"

        table.guarded("compile", f"{method} compile vs eager", compare)


DDP_METHODS = ("kd", "cid")


def ddp_worker(args) -> int:
    """One torchrun process: the DDP runs of DDP_METHODS (rank 0 writes them)."""
    sizes = TINY if args.tiny else FULL
    work = Path(args.ddp_worker)
    torch.set_num_threads(1)
    kdist.init_from_env(args.device)
    prof = ddp_profile(sizes, args.device, work)
    for method in DDP_METHODS:
        engine_run(prof, sizes, method, work, "ddp", work / "teacher" / "model.pt")
    kdist.shutdown()
    return 0


def ddp_profile(sizes: Sizes, device: str, work: Path) -> dict:
    """lr 0.01 (tests/test_distributed.py's measured tolerances); CID without its
    class-shape loss, which couples the samples of a batch (per rank in DDP, as in the
    reference repositories): the rest of CID, its prototypes included, is compared."""
    return profile_for(sizes, device, work, method_params={"cid": {"class_weight": 0.0}},
                       student_train={"epochs": sizes.engine_epochs, "batch_size": sizes.batch_size, "lr": 0.01,
                                      "schedule": "cosine"})


def check_ddp(table: Table, args, sizes: Sizes, device: torch.device, teacher: Path, work: Path) -> None:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 2
    # every visible GPU, as many as divide the global batch (each rank takes an equal slice)
    n = max(k for k in range(1, gpus + 1) if sizes.batch_size % k == 0)
    if n < 2:
        table.add("ddp", "torchrun", None, f"{gpus} GPU: kdbench runs one rank per GPU")
        return
    prof = ddp_profile(sizes, device.type, work)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(n), str(Path(__file__).resolve()),
           "--device", device.type, "--ddp-worker", str(work)] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def launch():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        return proc.returncode == 0, f"{n} processes" if proc.returncode == 0 else f"exit {proc.returncode}: {tail}"

    table.guarded("ddp", "torchrun", launch)
    if table.rows[-1].status != "pass":
        return
    for method in DDP_METHODS:
        def compare(method=method):
            single = engine_run(prof, sizes, method, work, "single", teacher)
            a = kio.load_torch(work / "ddp" / method / "model.pt")["state_dict"]
            b = kio.load_torch(single / "model.pt")["state_dict"]
            if set(a) != set(b):
                return False, f"model.pt tensors differ: {sorted(set(a) ^ set(b))[:5]}"
            gap = max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)
            return gap <= TOL["ddp"], f"{n} processes vs 1, global batch {sizes.batch_size}: max tensor gap {gap:.1e} (tol {TOL['ddp']:.0e})"

        table.guarded("ddp", f"{method} torchrun vs one", compare)


# ----------------------------------------------------------------------------- 4. bench, 5. evaluate
def check_bench(table: Table, sizes: Sizes, device: torch.device, work: Path) -> None:
    def bench():
        out = work / "bench.json"
        with contextlib.redirect_stdout(sys.stderr):
            bench_gpu.main(["--device", device.type, *sizes.bench_args, "--json", str(out)])
        rows = json.loads(out.read_text())
        ok = all(math.isfinite(r[k]) and r[k] > 0 for r in rows
                 for k in ("engine_img_s", "bare_img_s", "ratio", "projected_240_epoch_min"))
        return ok, "; ".join(f"batch {r['batch_size']}: engine {r['engine_img_s']:,.0f} img/s, bare "
                             f"{r['bare_img_s']:,.0f}, ratio {r['ratio']:.2f}, 240 epochs "
                             f"{r['projected_240_epoch_min']:.0f} min" for r in rows)

    table.guarded("bench", "bench_gpu.py", bench)


#: record fields that are not measurements of the student
EVAL_SKIP = ("eval_s", "device", "key", "versions", "code")


def check_evaluate(table: Table, prof: dict, sizes: Sizes, device: torch.device, teacher: Path, work: Path) -> None:
    from kdbench.evaluation.run import evaluate_run

    def compare():
        kd = engine_run(prof, sizes, "kd", work, "eval", teacher)
        base = engine_run(prof, sizes, "vanilla", work, "eval", teacher)
        ds = bench_gpu.bench_cifar(**prof["datasets"][DATASET])
        ev = {"n_samples": sizes.batch_size, "probe_train_samples": 2 * sizes.batch_size, "figures": False}
        recs = {str(d): evaluate_run(kd, teacher.parent, base, dataset=ds, evaluation=ev, device=d, reuse=False)
                for d in (device, torch.device("cpu"))}
        on_dev, on_cpu = recs[str(device)], recs["cpu"]
        numbers = {k: v for k, v in on_cpu.items() if not k.startswith(EVAL_SKIP) and not k.endswith("_s")
                   and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))}
        bad = [k for k, v in numbers.items()
               if (v is None) != (on_dev.get(k) is None)
               or (v is not None and not (math.isfinite(v) and math.isfinite(on_dev[k])))
               or (v is not None and rel_gap(on_dev[k], v) > TOL["evaluate"])]
        shown = [k for k, v in numbers.items() if v is not None]
        return not bad, (f"{len(shown)} metrics finite and within {TOL['evaluate']:.0e} of the CPU's"
                         if not bad else "differ or not finite: " + ", ".join(
                             f"{k}={on_dev.get(k)} vs {numbers[k]}" for k in bad[:4]))

    table.guarded("evaluate", f"{device.type} vs cpu", compare)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of this script: the tests)")
    ap.add_argument("--methods", nargs="+", help="only these methods in section 1 (default: every one)")
    ap.add_argument("--sections", nargs="+", default=["method", "compile", "ddp", "bench", "evaluate"],
                    choices=["method", "compile", "ddp", "bench", "evaluate"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    device = select_device(args.device)
    sizes = TINY if args.tiny else FULL
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)
    try:
        return run_checks(args, device, sizes)
    finally:
        torch.set_num_threads(threads)


def run_checks(args, device: torch.device, sizes: Sizes) -> int:
    set_deterministic()
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    print(f"gpu_check: {device} ({gpu}), {sizes.teacher} -> {sizes.student}, {sizes.image_size} px, "
          f"{sizes.num_classes} classes, torch {torch.__version__}", flush=True)
    table = Table()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prof = profile_for(sizes, device.type, work)
        teacher = make_teacher(prof, sizes, work)
        if "method" in args.sections:
            for method in args.methods or list(iter_method_names()):
                check_method(table, method, prof, sizes, device, teacher, work)
        if "compile" in args.sections:
            check_compile(table, prof, sizes, device, teacher, work)
        if "ddp" in args.sections:
            check_ddp(table, args, sizes, device, teacher, work)
        if "bench" in args.sections:
            check_bench(table, sizes, device, work)
        if "evaluate" in args.sections:
            check_evaluate(table, prof, sizes, device, teacher, work)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in table.rows], indent=1))
    failed = table.failed
    print(f"gpu_check: {len(table.rows)} checks, {len(failed)} failed, "
          f"{sum(r.status == 'n/a' for r in table.rows)} n/a ({time.time() - t0:.0f} s)", flush=True)
    for r in failed:
        print(f"FAILED {r.section} {r.check}: {r.detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
