#!/usr/bin/env python
"""Mutation check: deliberate bugs in a temporary copy of the source, and the tests that catch them.

    python scripts/mutation_check.py                    # every mutation
    python scripts/mutation_check.py --list             # their names and what they break
    python scripts/mutation_check.py pkt_weight_dropped rotate_reversed

Each mutation replaces one exact piece of text (it must occur exactly once) in one file of
a copy of the repository (kdbench/, tests/, params/, pyproject.toml, in a temporary
folder), then runs the tests named for it there (``PYTHONPATH`` = the copy, so the copy's
kdbench is imported). A mutation is *caught* when pytest fails; the failing tests are
listed. First, the same tests run on the unmutated copy and must pass (so a catch is the
mutation's doing, not a broken test). Exit status 1 if a mutation survives or the baseline
fails. Not run by the test suite (a few minutes: one pytest process per mutation).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
COPY = ("kdbench", "tests", "params", "pyproject.toml")
WIRING = "tests/test_method_wiring.py::test_terms_are_weights_times_functionals[{}]"
PIL_OPS = "tests/test_methods_crd_reviewkd_ofd_logit.py::test_strong_ops_match_pil_on_a_batch"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: Tuple[str, ...]


def wiring(*methods: str, also: Tuple[str, ...] = ()) -> Tuple[str, ...]:
    return tuple(WIRING.format(m) for m in methods) + also


#: the issue's two demonstrations (pkt, at) also run the tests that let them through before
OLD_PKT = ("tests/test_methods_feature_relational.py::test_distills_finite_decreasing_teacher_frozen[pkt-cifar]",)
OLD_AT = ("tests/test_engine.py::test_baseline_terms_finite_and_decreasing[at-terms3]",)

MUTATIONS: List[Mutation] = [
    Mutation("pkt_weight_dropped", "pkt's term without pkt_weight", "kdbench/methods/pkt.py",
             '"pkt": self.hparams["pkt_weight"] * KF.pkt_loss(', '"pkt": KF.pkt_loss(', wiring("pkt", also=OLD_PKT)),
    Mutation("at_weight_constant", "at's weight hard-coded to 0.5", "kdbench/methods/at.py",
             '"at": self.hparams["at_weight"] * at,', '"at": 0.5 * at,', wiring("at", also=OLD_AT)),
    Mutation("sp_wrong_stage", "sp on the middle stage instead of the last", "kdbench/methods/sp.py",
             "KF.sp_loss(fs.stages[-1], ft.stages[-1])", "KF.sp_loss(fs.stages[-2], ft.stages[-2])", wiring("sp")),
    Mutation("nst_teacher_stage_shifted", "nst pairs student stage k with teacher stage k-1", "kdbench/methods/nst.py",
             "KF.nst_loss(fs.stages[i], ft.stages[j])", "KF.nst_loss(fs.stages[i], ft.stages[max(j - 1, 0)])",
             wiring("nst")),
    Mutation("fitnet_wrong_stage", "fitnet's hint on the first stage instead of the middle one",
             "kdbench/methods/fitnet.py", "[len(s_shapes) // 2]", "[len(s_shapes) // 2 - 1]", wiring("fitnet")),
    Mutation("rkd_weights_swapped", "rkd's distance and angle weights swapped", "kdbench/methods/rkd.py",
             'distance_weight=h["distance_weight"],\n                          angle_weight=h["angle_weight"]',
             'distance_weight=h["angle_weight"],\n                          angle_weight=h["distance_weight"]',
             wiring("rkd")),
    Mutation("kd_ls_standardization_ignored", "kd_ls without logit standardization", "kdbench/methods/kd.py",
             'logit_stand=bool(h["logit_stand"]))', "logit_stand=False)", wiring("kd_ls")),
    Mutation("dkd_warmup_ignored", "dkd without its warm-up factor", "kdbench/methods/dkd.py",
             '"dkd": self.warmup_factor() * dkd', '"dkd": dkd', wiring("dkd")),
    Mutation("mlkd_strong_ce_dropped", "mlkd's CE on the weak view only", "kdbench/methods/mlkd.py",
             "(F.cross_entropy(z_sw, y) + F.cross_entropy(z_ss, y))", "F.cross_entropy(z_sw, y)", wiring("mlkd")),
    Mutation("cid_class_weight_dropped", "cid's class term without class_weight", "kdbench/methods/cid.py",
             'terms["class"] = h["class_weight"] * KF.cid_class_loss(', 'terms["class"] = KF.cid_class_loss(',
             wiring("cid")),
    Mutation("crd_one_direction", "crd's NCE on the student anchor only (twice)", "kdbench/methods/crd.py",
             "KF.crd_nce_loss(out_s, self.n_data) + KF.crd_nce_loss(out_t, self.n_data)",
             "2 * KF.crd_nce_loss(out_s, self.n_data)", wiring("crd")),
    Mutation("ofd_stage_weights_reversed", "ofd weighs the shallow stage 1 and the deep one 1/4",
             "kdbench/methods/ofd.py", "/ 2 ** (n - pos - 1)", "/ 2 ** pos", wiring("ofd")),
    Mutation("fsp_stem_dropped", "fsp's initialisation loss without the stem pair", "kdbench/methods/fsp.py",
             "KF.fsp_loss([gs[0]] + [gs[i + 1] for i, _ in self.pairs],\n"
             "                           [gt[0]] + [gt[j + 1] for _, j in self.pairs])",
             "KF.fsp_loss([gs[i + 1] for i, _ in self.pairs],\n"
             "                           [gt[j + 1] for _, j in self.pairs])", wiring("fsp")),
    Mutation("e2kd_wrong_stage", "e2kd's student Grad-CAM on the middle stage", "kdbench/methods/e2kd.py",
             "fs.stages[-1], fs.logits, top1, cam_t)", "fs.stages[-2], fs.logits, top1, cam_t)",
             wiring("e2kd", "e2kd_kdmatched", "e2kd_frozen")),
    Mutation("tdd_tree_weight_dropped", "tdd's tree term without tree_weight", "kdbench/methods/tdd.py",
             'terms["tree"] = self.hparams["tree_weight"] * self.tree_loss(', 'terms["tree"] = self.tree_loss(',
             wiring("tdd")),
    Mutation("kd_loss_without_t2", "kd_loss without its T² factor (the functional)", "kdbench/functional/losses.py",
             "return kl * (t * t) / student_logits.shape[0]", "return kl / student_logits.shape[0]",
             ("tests/test_functional.py", WIRING.format("kd"))),
    Mutation("rotate_reversed", "RandAugment's rotation clockwise instead of PIL's counter-clockwise",
             "kdbench/data/randaugment.py", "a = -v * math.pi / 180.0", "a = v * math.pi / 180.0", (PIL_OPS,)),
    Mutation("shear_x_as_shear_y", "shear_x shears along y", "kdbench/data/randaugment.py",
             'if name == "shear_x":\n        m[:, 0, 1] = v', 'if name == "shear_x":\n        m[:, 1, 0] = v', (PIL_OPS,)),
    Mutation("translate_y_along_x", "translate_y moves along x", "kdbench/data/randaugment.py",
             "m[:, 1, 2] = v * h", "m[:, 0, 2] = v * h", (PIL_OPS,)),
    Mutation("gray_truncated", "the gray (L) conversion truncated instead of PIL's rounding",
             "kdbench/data/randaugment.py", "b * 7471 + 32768) / 65536)", "b * 7471) / 65536)", (PIL_OPS,)),
    Mutation("sharpness_kernel", "sharpness' smoothing kernel centre 4 instead of 5", "kdbench/data/randaugment.py",
             "k[1, 1] = 5.0", "k[1, 1] = 4.0", (PIL_OPS,)),
    Mutation("contrast_mean_unrounded", "contrast blends towards the unrounded mean", "kdbench/data/randaugment.py",
             "mean = (_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()",
             "mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)", (PIL_OPS,)),
]


def make_copy(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)


def apply(root: Path, m: Mutation) -> str:
    """Apply ``m`` in ``root``; return the original text (to restore)."""
    path = root / m.path
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutation {m.name}: the text to replace occurs {n} times in {m.path} (must be once)")
    path.write_text(text.replace(m.old, m.new))
    return text


def pytest(root: Path, tests: Tuple[str, ...]) -> Tuple[int, List[str], str]:
    env = {**os.environ, "PYTHONPATH": str(root), "KDBENCH_ROOT": str(root)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf", *tests],
                          cwd=root, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out, re.M)))
    return proc.returncode, failed, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:32s} {m.path}: {m.what}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"unknown mutation(s) {unknown}; choose from {sorted(by_name)}", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.names] or MUTATIONS
    survived = []
    with tempfile.TemporaryDirectory(prefix="kdbench-mutation-") as tmp:
        root = Path(tmp)
        make_copy(root)
        for m in chosen:  # every mutation's text is where it is expected, before any test runs
            (root / m.path).write_text(apply(root, m))
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, failed, out = pytest(root, tests)
        if rc != 0:
            print(f"baseline (no mutation) fails: {failed}\n{out[-3000:]}", file=sys.stderr)
            return 1
        print(f"baseline: {len(tests)} test selections pass on the unmutated copy")
        for m in chosen:
            original = apply(root, m)
            t0 = time.perf_counter()
            try:
                rc, failed, out = pytest(root, m.tests)
            finally:
                (root / m.path).write_text(original)
            if rc == 0:
                survived.append(m.name)
                print(f"SURVIVED  {m.name}: {m.what} ({m.path})")
            elif not failed:  # a collection or usage error is not a catch
                survived.append(m.name)
                print(f"ERROR     {m.name}: pytest exit {rc} without failing tests\n{out[-2000:]}")
            else:
                passed = [t for t in m.tests if "::" in t and t not in failed]
                print(f"caught    {m.name}: {m.what} ({m.path}), {time.perf_counter() - t0:.1f} s")
                for t in failed:
                    print(f"            failed: {t}")
                for t in passed:
                    print(f"            passed: {t}")
    print(f"\n{len(chosen) - len(survived)} of {len(chosen)} mutations caught"
          + (f"; survived: {survived}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
