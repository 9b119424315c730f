"""Throughput of the kdbench engine vs a bare PyTorch loop on the same model and batches.

    python scripts/bench_engine.py [--arch resnet20] [--size 32] [--n-train 2560] [--epochs 2]

Both train ``arch`` with SGD + cross-entropy (method ``vanilla``) on ``shapes`` for the same
number of epochs, batch 128, on the same loader batches. The engine's time is its training
time (``train_s``: the training loops, excluding the per-epoch evaluation and checkpoint,
which are reported separately as the job's overhead). Prints images/s and the ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2560)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from kdbench.config import teacher_config, with_defaults
    from kdbench.data.cache import load_dataset
    from kdbench.data.loader import make_loader
    from kdbench.engine import trainer
    from kdbench.engine.runtime import seed_everything, set_threads
    from kdbench.models import create_model

    opts = {"image_size": args.size, "n_train": args.n_train, "n_val": 256, "n_test": 256, "n_test_ood": 256}
    recipe = {"epochs": args.epochs, "batch_size": 128, "lr": 0.05, "schedule": "cosine"}
    profile = with_defaults({"datasets": {"shapes": opts}, "pairs": [], "methods": ["vanilla"], "seeds": [0],
                             "teacher_train": recipe, "student_train": recipe, "threads": args.threads})
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        ds = load_dataset("shapes", opts, results)
        cfg = teacher_config(profile, "shapes", args.arch, 0)

        # bare loop: same loader batches, same optimizer settings
        set_threads(args.threads)
        seed_everything(0)
        model = create_model(args.arch, ds.num_classes).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loader = make_loader(ds, "train", 128, train=True, seed=0)
        n, t0 = 0, time.perf_counter()
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += batch["label"].shape[0]
        bare = n / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        m = trainer.run(cfg, results / "engine", results_dir=results)
        wall = time.perf_counter() - t0
        engine = m["train_img_s"]
    print(f"arch={args.arch} size={args.size} images/epoch={args.n_train} epochs={args.epochs} threads={args.threads}")
    print(f"bare loop     : {bare:8.1f} img/s")
    print(f"kdbench engine: {engine:8.1f} img/s (training loop); job wall {wall:.1f}s incl. "
          f"per-epoch val/test evaluation and checkpoints ({m['train_s']:.1f}s training)")
    print(f"ratio engine/bare: {engine / bare:.3f}")


if __name__ == "__main__":
    main()
