"""Per-stage linear probes of a trained teacher: coarse groups vs fine classes.

    python scripts/probe_shapes.py --params params/embedded.yaml --dataset shapes \
        --arch resnet32 --seed 0 [--features stages|taps] [--n-train 2000]

Loads ``results/teachers/<dataset>/<arch>/s<seed>/model.pt``, pools every stage's output
(``stages``: the StagedNet stage outputs; ``taps``: the TDD taps, an early block's
pre-activation output in each stage) over the training split and the test split, fits the
decision-consistency probe (:func:`kdbench.evaluation.hierarchy.fit_probe`) on train and
prints its test accuracy for the dataset's coarsest true groups and for the classes, raw
and chance-normalised ((acc - chance) / (1 - chance)).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/embedded.yaml")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", choices=("stages", "taps"), default="stages")
    ap.add_argument("--n-train", type=int, default=2000, help="training images the probes are fit on")
    args = ap.parse_args(argv)

    import torch

    from kdbench.config import run_paths
    from kdbench.profile import load_profile
    from kdbench.data.cache import load_dataset
    from kdbench.engine.runtime import set_threads
    from kdbench.engine.model_io import load_model
    from kdbench.evaluation.hierarchy import stage_probe_table

    profile = load_profile(args.params)
    set_threads(profile["threads"])
    results = Path(profile["results_dir"])
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], results)
    if not ds.hierarchy:
        print(f"{args.dataset} has no ground-truth hierarchy", file=sys.stderr)
        return 2
    tdir = run_paths(results, "teacher", args.dataset, args.arch, args.seed)
    model, _ = load_model(tdir / "model.pt", torch.device("cpu"))
    rows = stage_probe_table(model, ds, n_train=args.n_train, features=args.features)
    print(f"{args.dataset} {args.arch} s{args.seed} ({args.features}; probe fit on {min(args.n_train, len(ds.splits['train']))}"
          f" train images, scored on {len(ds.splits['test'])} test images)")
    print("| stage | coarse acc (chance) | fine acc (chance) | coarse norm | fine norm |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['coarse']:.3f} ({r['coarse_chance']:.3f}) | {r['fine']:.3f} ({r['fine_chance']:.3f}) "
              f"| {r['coarse_norm']:.3f} | {r['fine_norm']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
