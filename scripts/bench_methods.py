"""Training-step cost of every distillation method relative to ``kd``, on this machine.

    python scripts/bench_methods.py [--teacher resnet56] [--student resnet20] [--size 16]
                                    [--batch 64] [--steps 10] [--methods kd fcfd peers_b ...]
                                    [--set crd.nce_k=4096 ...]

For each method: build the distiller (untrained teacher: the cost does not depend on the
weights), run ``prepare`` on a small ``shapes`` training split (its time is reported
apart, with the initialisation stage of fsp/ab/ft), take a few untimed warm-up steps in
epoch 0, end the epoch (CID builds its prototypes: the timed steps are post-warm-up ones), then time full SGD steps (``loss``,
backward, update) on pre-fetched batches of the training loader (with the method's
aligned tensors). Prints the median step time and its ratio to kd's. Not run by the tests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from kdbench.hparams import method_hparams  # noqa: E402
from kdbench.data import build_dataset  # noqa: E402
from kdbench.data.loader import make_loader  # noqa: E402
from kdbench.methods import TrainContext, get_method, iter_method_names  # noqa: E402
from kdbench.models import create_model  # noqa: E402

# -- peer methods A (nst, pkt, rkd, sp, kdsvd, vid, cc, fsp, ft, ab) --------------------------
#: the two-stage protocols: their initialisation stage runs at the start of epoch 0
#: (``on_epoch_start``, inside the untimed warm-up here); its seconds join "prepare s"
INIT_STAGE_METHODS = ("fsp", "ab", "ft")


def init_stage_seconds(distiller) -> float:
    """Wall seconds of a two-stage method's initialisation stage (0 for the others)."""
    return float(getattr(distiller, "init_stage_s", 0.0))
# -- end peer methods A -------------------------------------------------------------------------


#: named groups for --methods (each helper's methods as one block)
GROUPS = {}
# ---- peer methods (b): contrastive/feature (crd, reviewkd, ofd), logit relations (dist),
# logit standardization rows, multi-level (mlkd, weak + strong views), curriculum temperature
GROUPS["peers_b"] = ["crd", "reviewkd", "ofd", "dist", "kd_ls", "dkd_ls", "mlkd", "mlkd_ls", "ctkd", "ctkd_ls"]
# ---- end peer methods (b)


def calibrated_teacher(arch: str, ds, device, batches: int = 8):
    """An untrained teacher whose BatchNorm running statistics are those of the data (a few
    train-mode forward passes, no weight update): an untrained net with the initial unit
    statistics has activations that grow through every residual block, and a method that
    fits the teacher's features (ft's paraphraser stage) diverges on them."""
    torch.manual_seed(0)
    teacher = create_model(arch, ds.num_classes).to(device)
    for m in teacher.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    teacher.train()
    with torch.no_grad():
        for i, batch in enumerate(make_loader(ds, "train", 64, train=False, seed=0, device=device)):
            if i == batches:
                break
            teacher(batch["image"])
    return teacher.eval()


def bench(method: str, args, ds, device) -> dict:
    torch.manual_seed(0)
    cls = get_method(method)
    teacher = calibrated_teacher(args.teacher, ds, device) if cls.needs_teacher else None
    student = create_model(args.student, ds.num_classes)
    hp = method_hparams(method, args.teacher if cls.needs_teacher else None, args.student)
    for item in args.set or []:  # method.key=value (YAML value)
        key, value = item.split("=", 1)
        m, k = key.split(".", 1)
        if m == method:
            hp[k] = yaml.safe_load(value)
    # epochs=2: warm-ups and ramps (given for 240 epochs) end after the first epoch
    d = cls(student, teacher, ds.num_classes, hp, epochs=2, input_size=args.size).to(device)

    def loader(split, batch_size, train, aligned=None, **options):
        return make_loader(ds, split, batch_size, train=train, seed=0, device=device, aligned=aligned, **options)

    ctx = TrainContext(dataset=ds, train_split=ds.splits["train"], device=device, batch_size=args.batch,
                       seed=0, make_loader=loader)
    t0 = time.perf_counter()
    d.prepare(ctx)
    prepare_s = time.perf_counter() - t0
    train_loader = loader(ds.splits["train"], args.batch, True, d.aligned_tensors() or None, **d.loader_options())
    train_loader.set_epoch(0)
    batches = list(train_loader)
    opt = torch.optim.SGD(d.param_groups(5e-4), lr=0.01, momentum=0.9)

    def step(batch):
        terms = d.loss(batch)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()

    d.train()
    d.on_epoch_start(0)
    for i in range(args.warmup_steps):
        step(batches[i % len(batches)])
    d.on_epoch_end(0)
    prepare_s += init_stage_seconds(d)
    d.on_epoch_start(1)
    times = []
    for i in range(args.steps):
        batch = batches[i % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times), "prepare_s": prepare_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--size", type=int, default=16, help="image size of the shapes data (px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=512, help="training images (prepare passes over all)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method")
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"default: every registered method; group names expand: {sorted(GROUPS)}")
    ap.add_argument("--set", nargs="*", default=None, metavar="METHOD.KEY=VALUE",
                    help="hyperparameter overrides, e.g. crd.nce_k=4096")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = [m for name in (args.methods or list(iter_method_names())) for m in GROUPS.get(name, [name])]
    if "kd" not in methods:
        methods = ["kd"] + methods
    ds = build_dataset("shapes", image_size=args.size, n_train=args.n_train, n_val=64, n_test=64, n_test_ood=64)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
          f"{args.teacher} -> {args.student}, shapes {args.size} px, batch {args.batch}, "
          f"median of {args.steps} steps", flush=True)
    rows = {}
    for m in methods:
        rows[m] = bench(m, args, ds, device)
    ref = rows["kd"]["step_s"]
    print(f"{'method':14s} {'ms/step':>9s} {'x kd':>6s} {'prepare s':>10s}")
    for m in methods:
        r = rows[m]
        print(f"{m:14s} {1000 * r['step_s']:9.1f} {r['step_s'] / ref:6.2f} {r['prepare_s']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
