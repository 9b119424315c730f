#!/usr/bin/env python
"""Benchmark kdbench's in-memory batch loader against the usual torchvision pipeline.

Writes a CIFAR-10-format dataset of random images (the real pickle format) to a temp dir,
then times one training epoch (batch 128, pad-4 random crop + flip + normalise) with
  - kdbench: ``build_dataset("cifar10") + make_loader(..., train=True)`` (batched tensor ops)
  - torchvision: ``datasets.CIFAR10`` + per-sample ``transforms.Compose([RandomCrop(32, 4),
    RandomHorizontalFlip(), ToTensor(), Normalize(...)])`` in a ``DataLoader``
    (num_workers 0 and 2),
and prints images/s and the ratio (kdbench's best over 1 and all intra-op threads: on a
busy machine, torch's intra-op threads contend and one thread is often faster). Also times building ``shapes`` (default options and
with 10k training images).

    python scripts/bench_loader.py [--n-train 10000] [--batch-size 128] [--epochs 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def time_epochs(loader, epochs: int, set_epoch=None) -> float:
    """Best-of-``epochs`` images/s of one full pass (consuming the image tensors)."""
    best = 0.0
    for e in range(epochs):
        if set_epoch:
            set_epoch(e)
        t, n = time.perf_counter(), 0
        for batch in loader:
            x = batch["image"] if isinstance(batch, dict) else batch[0]
            n += x.shape[0]
        best = max(best, n / (time.perf_counter() - t))
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="passes per loader (best is reported)")
    args = ap.parse_args(argv)

    import torch
    import torchvision
    from torchvision import transforms as T

    from kdbench.data import build_dataset
    from kdbench.data.loader import make_loader
    from tests import fakedata

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu")
    for label, opts in [("default options", {}), ("n_train=10000", {"n_train": 10000})]:
        t = time.perf_counter()
        d = build_dataset("shapes", **opts)
        total = sum(len(s) for s in d.splits.values())
        print(f"shapes build ({label}, {total} images): {time.perf_counter() - t:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        per_batch = -(-args.n_train // 5)
        fakedata.write_cifar10(tmp, per_batch=per_batch, n_test=1000)
        n = 5 * per_batch
        bs = args.batch_size
        t = time.perf_counter()
        ds = build_dataset("cifar10", data_root=tmp, val_size=max(1, n // 10))
        print(f"\ncifar10-format data: {n} images on disk; kdbench build {time.perf_counter() - t:.2f} s; "
              f"train split {len(ds.splits['train'])}, batch {bs}")
        loader = make_loader(ds, "train", bs, train=True, seed=0)
        default_threads = torch.get_num_threads()
        results = {}
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            results[threads] = time_epochs(loader, args.epochs, loader.set_epoch)
            print(f"kdbench in-memory loader ({threads} thread{'s' if threads > 1 else ''}): {results[threads]:10.0f} img/s")
        torch.set_num_threads(default_threads)
        ours = max(results.values())

        mean, std = ds.mean, ds.std
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
        ref = fakedata.unchecked_cifar(torchvision.datasets.CIFAR10)(tmp, train=True, transform=tf)
        # the same number of images as kdbench's train split
        ref = torch.utils.data.Subset(ref, range(len(ds.splits["train"])))
        for workers in (0, 2):
            dl = torch.utils.data.DataLoader(ref, batch_size=bs, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0)
            theirs = time_epochs(dl, args.epochs)
            print(f"torchvision DataLoader (workers={workers}):  {theirs:10.0f} img/s   "
                  f"kdbench / torchvision = {ours / theirs:6.1f}x")


if __name__ == "__main__":
    main()
