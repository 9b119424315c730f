"""Compare two results trees value by value: a refactoring must leave every number alone.

    python scripts/compare_results.py BEFORE AFTER [--models]

BEFORE and AFTER are results directories (e.g. ``/work/before/results`` and ``results``)
of the same profile. Compared, at the same relative paths:

- ``students/**/metrics.json``, ``teachers/**/metrics.json``, ``evals/**/*.json``: every
  key, nested, exactly (floats bit for bit; NaN equals NaN);
- ``students/**/history.csv``, ``teachers/**/history.csv`` and every ``leaderboard/*.csv``
  (``runs.csv`` included): every cell of every column, as written;
- ``leaderboard/metrics.json``: like the metrics files;
- with ``--models``: every ``model.pt``'s tensors (``torch.equal``) and metadata.

Ignored, and only these (wall-clock times and what is computed from them): the keys and
columns named in :data:`WALL_CLOCK`, and the same names with a ``_mean`` / ``_std`` suffix
(the board's aggregates of them). A file present on one side only is a difference.

Prints one line per differing file and key (``path: key: before != after``) and exits 1
on any difference, 0 when the trees agree.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Iterator, List

#: seconds (training, whole job, evaluation, one epoch, a teacher's training, the init stage
#: of ab / fsp / ft: a buffer in their model.pt) and images per second of training
WALL_CLOCK = ("train_s", "wall_s", "eval_s", "epoch_s", "train_img_s", "teacher_train_s", "init_stage_s")
JSON_GLOBS = ("students/**/metrics.json", "teachers/**/metrics.json", "evals/**/*.json", "leaderboard/metrics.json")
CSV_GLOBS = ("students/**/history.csv", "teachers/**/history.csv", "leaderboard/*.csv")
MODEL_GLOBS = ("students/**/model.pt", "teachers/**/model.pt")


def ignored(key: str) -> bool:
    for suffix in ("", "_mean", "_std"):
        if suffix and not key.endswith(suffix):
            continue
        if key[: len(key) - len(suffix)] in WALL_CLOCK:
            return True
    return False


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def diff_json(a, b, where: str = "") -> Iterator[str]:
    """``key: before != after`` for every differing leaf (wall-clock keys skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if ignored(str(key)):
                continue
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                yield f"{sub}: {'missing' if key not in a else repr(a[key])} != {'missing' if key not in b else repr(b[key])}"
            else:
                yield from diff_json(a[key], b[key], sub)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff_json(x, y, f"{where}[{i}]")
    elif not same_value(a, b):
        yield f"{where or '<root>'}: {a!r} != {b!r}"


def diff_csv(pa: Path, pb: Path) -> Iterator[str]:
    ra, rb = (list(csv.reader(p.open(newline=""))) for p in (pa, pb))
    if not ra or not rb:
        if ra != rb:
            yield "<file>: empty on one side"
        return
    ha, hb = ra[0], rb[0]
    if ha != hb:
        yield f"<header>: {ha} != {hb}"
        return
    if len(ra) != len(rb):
        yield f"<rows>: {len(ra) - 1} != {len(rb) - 1}"
    for i, (x, y) in enumerate(zip(ra[1:], rb[1:]), start=1):
        for col, u, v in zip(ha, x, y):
            if not ignored(col) and u != v:
                yield f"row {i} {col}: {u!r} != {v!r}"


def diff_model(pa: Path, pb: Path) -> Iterator[str]:
    import torch  # only with --models: the JSON / CSV comparison needs no torch

    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (pa, pb))
    yield from diff_json(a["meta"], b["meta"], "meta")
    sa, sb = a["state_dict"], b["state_dict"]
    for key in sorted(set(sa) | set(sb)):
        if ignored(key.rsplit(".", 1)[-1]):
            continue
        if key not in sa or key not in sb:
            yield f"state_dict.{key}: present on one side only"
        elif sa[key].dtype != sb[key].dtype or sa[key].shape != sb[key].shape or not torch.equal(sa[key], sb[key]):
            yield f"state_dict.{key}: tensors differ"


def files(root: Path, globs) -> List[str]:
    return sorted({p.relative_to(root).as_posix() for g in globs for p in root.glob(g) if p.is_file()})


def compare(before: Path, after: Path, models: bool = False) -> List[str]:
    out: List[str] = []
    kinds = [(JSON_GLOBS, lambda a, b: diff_json(json.loads(a.read_text()), json.loads(b.read_text()))),
             (CSV_GLOBS, diff_csv)]
    if models:
        kinds.append((MODEL_GLOBS, diff_model))
    for globs, differ in kinds:
        fa, fb = files(before, globs), files(after, globs)
        out += [f"{rel}: only in {before}" for rel in sorted(set(fa) - set(fb))]
        out += [f"{rel}: only in {after}" for rel in sorted(set(fb) - set(fa))]
        for rel in sorted(set(fa) & set(fb)):
            out += [f"{rel}: {line}" for line in differ(before / rel, after / rel)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--models", action="store_true", help="also compare every model.pt's tensors (needs torch)")
    args = ap.parse_args(argv)
    for root in (args.before, args.after):
        if not root.is_dir():
            ap.error(f"{root} is not a directory")
    n_files = sum(len(files(args.before, g)) for g in (JSON_GLOBS, CSV_GLOBS) + ((MODEL_GLOBS,) if args.models else ()))
    diffs = compare(args.before, args.after, args.models)
    for line in diffs:
        print(line)
    ignored_keys = ", ".join(WALL_CLOCK)
    if diffs:
        print(f"{len(diffs)} difference(s) over {n_files} files of {args.before} (ignored: {ignored_keys} "
              f"and their _mean/_std)", file=sys.stderr)
        return 1
    print(f"identical: {n_files} files (ignored: {ignored_keys} and their _mean/_std)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
