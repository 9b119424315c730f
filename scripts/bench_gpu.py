#!/usr/bin/env python
"""Training throughput of the engine vs a bare PyTorch loop: KD of resnet32x4 -> resnet8x4
at CIFAR size (32 px, 100 classes).

The engine path is ``kdbench.engine.trainer.run`` itself (a real job: data resident on
the device, batched crop+flip on the device, the method's ``loss``, kdbench's SGD, the
per-step finiteness check, checkpoints), on a random uint8 CIFAR-shaped dataset registered
as ``bench_cifar``; its img/s is the last epoch's training images over that epoch's
training time (``history.csv``: ``epoch_s`` less a validation pass over a tiny split).
The bare loop is the same models, data on the device, the same crop+flip done inline, the
same KD loss (CE + T²·KL, batchmean), ``torch.optim.SGD`` — with the same precision,
memory format and (optionally) torch.compile. Both see the same number of images per epoch.

    python scripts/bench_gpu.py                                  # GPU: 50k images, batch 64 and 128
    python scripts/bench_gpu.py --device cpu --n-train 256 --batch-sizes 32 --epochs 2 \\
        --teacher resnet8x4 --student resnet8x4 --image-size 16   # a quick CPU check

Prints one line per batch size: engine img/s, bare img/s, their ratio, and the projected
time of a 240-epoch CIFAR-100 run (50,000 training images, training steps only).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdbench.config import RunConfig  # noqa: E402
from kdbench.data.base import DATASETS, OPTION_TYPES, SEED_OPTION, Dataset, Split  # noqa: E402
from kdbench.engine import model_io, trainer  # noqa: E402
from kdbench.evaluation.predict import predict_split  # noqa: E402
from kdbench.engine.runtime import select_device  # noqa: E402
from kdbench.models import create_model  # noqa: E402

CIFAR100_TRAIN = 50_000
MEAN, STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)


def bench_cifar(n_train: int = 1024, n_val: int = 64, image_size: int = 32, num_classes: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g),
                     torch.randint(0, num_classes, (n,), generator=g))

    return Dataset(name="bench_cifar", splits={"train": split(n_train), "val": split(n_val), "test": split(n_val)},
                   num_classes=num_classes, class_names=[str(k) for k in range(num_classes)],
                   fingerprint=f"bench-{n_train}-{n_val}-{image_size}-{num_classes}-{seed}", mean=MEAN, std=STD,
                   augment={"crop_pad": 4, "flip": True}, image_size=image_size,
                   options=dict(n_train=n_train, n_val=n_val, image_size=image_size, num_classes=num_classes,
                                seed=seed))


if "bench_cifar" not in DATASETS:
    DATASETS.register("bench_cifar", bench_cifar)
    _COUNT = {"type": "integer", "minimum": 1, "maximum": CIFAR100_TRAIN}
    OPTION_TYPES["bench_cifar"] = {"n_train": _COUNT, "n_val": _COUNT,
                                   "image_size": {"type": "integer", "minimum": 8, "maximum": 256},
                                   "num_classes": {"type": "integer", "minimum": 2, "maximum": 1000},
                                   "seed": SEED_OPTION}


def recipe(args, batch_size: int) -> dict:
    return {"epochs": args.epochs, "batch_size": batch_size, "eval_batch_size": 512, "lr": 0.05, "momentum": 0.9,
            "nesterov": False, "weight_decay": 5e-4, "schedule": "step", "milestones": [10**6], "gamma": 0.1,
            "student_shots": None, "arch_lr": {}}


def engine_img_s(args, batch_size: int, work: Path, options: dict) -> float:
    """img/s of the last epoch of a real kdbench KD job."""
    common = dict(dataset="bench_cifar", dataset_options=options, seed=0, device=args.device, threads=args.threads,
                  precision=args.precision, channels_last=args.channels_last, compile=args.compile)
    tpath = work / "teacher" / "model.pt"
    if not tpath.is_file():  # a random-init teacher: throughput does not depend on its weights
        tcfg = RunConfig(kind="teacher", arch=args.teacher, method="vanilla", recipe=recipe(args, batch_size), **common)
        d = model_io.build_distiller(tcfg, options["num_classes"], options["image_size"])
        model_io.save_model(tpath, d, tcfg, options["num_classes"], {"input_size": options["image_size"]})
    cfg = RunConfig(kind="student", arch=args.student, method="kd", teacher=args.teacher, teacher_seed=0,
                    recipe=recipe(args, batch_size), hparams={"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
                    **common)
    out = work / f"kd_b{batch_size}"
    trainer.run(cfg, out, results_dir=work / "results", teacher_path=tpath)
    rows = list(csv.DictReader((out / "history.csv").open()))
    # the last epoch's time less its validation pass (a tiny split: timed below)
    val_s = _val_seconds(out, args, options)
    steps = options["n_train"] // batch_size
    return steps * batch_size / max(float(rows[-1]["epoch_s"]) - val_s, 1e-9)


def _val_seconds(out: Path, args, options: dict) -> float:
    dev = select_device(args.device)
    model, _ = model_io.load_model(out / "model.pt", dev)
    ds = bench_cifar(**options)
    t0 = time.perf_counter()
    predict_split(model, ds, "val", dev, 512)
    _sync(dev)
    return time.perf_counter() - t0


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bare_img_s(args, batch_size: int, options: dict) -> float:
    """img/s of a plain PyTorch KD loop over the same data (last of ``epochs`` epochs)."""
    dev = select_device(args.device)
    torch.manual_seed(0)
    ds = bench_cifar(**options)
    x_all = ds.splits["train"].images.to(dev)
    y_all = ds.splits["train"].labels.to(dev)
    n, _, h, w = x_all.shape
    p = 4
    padded = F.pad(x_all, (p, p, p, p))
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255
    teacher = create_model(args.teacher, options["num_classes"]).to(dev).eval().requires_grad_(False)
    student = create_model(args.student, options["num_classes"]).to(dev).train()
    fmt = torch.channels_last if args.channels_last and dev.type == "cuda" else torch.contiguous_format
    teacher, student = teacher.to(memory_format=fmt), student.to(memory_format=fmt)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    T = 4.0

    def step(x, y):
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        kl = F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), reduction="batchmean", log_target=True)
        loss = 0.1 * F.cross_entropy(zs, y) + 0.9 * T * T * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if args.compile and dev.type == "cuda":
        step = torch.compile(step)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16" and dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    ar = torch.arange(h, device=dev)
    steps = n // batch_size
    elapsed = 0.0
    for epoch in range(args.epochs):
        g = torch.Generator(device=dev).manual_seed(epoch)
        order = torch.randperm(n, device=dev, generator=g)
        oy = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=g)
        ox = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=g)
        fl = torch.rand(n, device=dev, generator=g) < 0.5
        _sync(dev)
        t0 = time.perf_counter()
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            rows = (oy[idx, None] + ar)[:, :, None]  # B×H×1
            cols = (ox[idx, None] + ar)[:, None, :]  # B×1×W
            cols = torch.where(fl[idx, None, None], cols.flip(-1), cols)
            x = padded[idx[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # B×C×H×W
            x = ((x.float() - mean) / std).contiguous(memory_format=fmt)
            with autocast:
                step(x, y_all[idx])
        _sync(dev)
        elapsed = time.perf_counter() - t0
    return steps * batch_size / elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n-train", type=int, default=CIFAR100_TRAIN, help="images per epoch (CIFAR-100: 50000)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed; the last one counts (default 2)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action="store_true", help="torch.compile the step (CUDA only, both paths)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    dev = select_device(args.device)
    options = dict(n_train=args.n_train, n_val=64, image_size=args.image_size, num_classes=args.num_classes, seed=0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for bs in args.batch_sizes:
            eng = engine_img_s(args, bs, Path(tmp), options)
            bare = bare_img_s(args, bs, options)
            run_240 = 240 * CIFAR100_TRAIN / eng
            row = {"device": str(dev), "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
                   "pair": f"{args.teacher}->{args.student}", "batch_size": bs, "engine_img_s": eng, "bare_img_s": bare,
                   "ratio": eng / bare, "projected_240_epoch_min": run_240 / 60, "precision": args.precision,
                   "channels_last": args.channels_last, "compile": args.compile, "image_size": args.image_size}
            results.append(row)
            print(f"{row['pair']} on {row['gpu'] or dev}: batch {bs}: engine {eng:,.0f} img/s, bare loop {bare:,.0f} "
                  f"img/s, ratio {eng / bare:.3f}; projected 240-epoch CIFAR-100 run (50k images, training only): "
                  f"{run_240 / 60:.1f} min", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if dev.type != "cuda":
        print("GPU numbers: not measured: no device (this run was on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
