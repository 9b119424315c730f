"""Training throughput of a few CIFAR students on this machine (CPU by default).

    python scripts/bench_models.py [--archs resnet20 wrn_16_2] [--iters 5] [--batch 128]

Prints images/s of a full SGD step (forward, cross-entropy, backward, update) at 32 px,
after one warm-up step. Not run by the tests.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from kdbench.models import create_model  # noqa: E402

DEFAULT_ARCHS = ["resnet20", "resnet8x4", "wrn_16_2", "mobilenetv2"]


def bench(arch: str, batch: int, iters: int, device: str) -> float:
    torch.manual_seed(0)
    model = create_model(arch, 100).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, 32 px, {args.iters} iters")
    for arch in args.archs:
        print(f"{arch:14s} {bench(arch, args.batch, args.iters, args.device):8.1f} train img/s", flush=True)


if __name__ == "__main__":
    main()
