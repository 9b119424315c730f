"""Cost of ``kdbench evaluate`` for one student vs the cost of training it.

    python scripts/bench_evaluate.py [--params params/embedded.yaml] [--dataset shapes]
        [--teacher resnet32 --student resnet8] [--method kd] [--seed 0] [--teacher-epochs 5]

If the run (and its teacher and vanilla base) exists under the profile's results_dir it
is evaluated as is; otherwise the teacher, the vanilla base and the student are trained
first with the profile's recipes into a temporary directory (the teacher with
``--teacher-epochs``, which does not enter the comparison). ``evaluate_run`` is timed
twice: cold (derives and caches the teacher's TDD partitions) and warm (every further
student of that teacher). Prints eval_s, the student's ``train_s`` (metrics.json) and the
ratios.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/embedded.yaml")
    ap.add_argument("--dataset", default=None, help="default: the profile's first dataset")
    ap.add_argument("--teacher", default=None, help="default: the profile's first pair")
    ap.add_argument("--student", default=None)
    ap.add_argument("--method", default="kd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from kdbench.config import run_paths, teacher_config
    from kdbench.hparams import student_config
    from kdbench.profile import load_profile
    from kdbench.data.cache import load_dataset
    from kdbench.engine import trainer
    from kdbench.engine.runtime import set_threads
    from kdbench.evaluation.run import PARTITIONS_FILE, evaluate_run

    profile = load_profile(args.params)
    profile["threads"] = args.threads
    ds_name = args.dataset or next(iter(profile["datasets"]))
    teacher = args.teacher or profile["pairs"][0]["teacher"]
    student = args.student or profile["pairs"][0]["student"]
    t_seed = profile["teacher_seed"] if profile["teacher_seed"] is not None else args.seed

    def dirs(results):
        return (run_paths(results, "student", ds_name, student, args.seed, teacher=teacher, method=args.method),
                run_paths(results, "teacher", ds_name, teacher, t_seed),
                run_paths(results, "student", ds_name, student, args.seed, teacher=teacher, method="vanilla"))

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(profile["results_dir"])
        sdir, tdir, bdir = dirs(results)
        if not all((d / "model.pt").is_file() for d in (sdir, tdir, bdir)):
            results = Path(tmp)
            sdir, tdir, bdir = dirs(results)
            tprof = dict(profile, teacher_train=dict(profile["teacher_train"], epochs=args.teacher_epochs))
            print(f"training {teacher} ({args.teacher_epochs} epochs), vanilla and {args.method} {student} "
                  f"on {ds_name} into {tmp}", flush=True)
            trainer.run(teacher_config(tprof, ds_name, teacher, t_seed), tdir, results_dir=results)
            for method in dict.fromkeys(["vanilla", args.method]):
                d = dirs(results)[2] if method == "vanilla" else sdir
                trainer.run(student_config(profile, ds_name, teacher, student, method, args.seed), d,
                            results_dir=results, teacher_path=tdir / "model.pt")
        ds = load_dataset(ds_name, profile["datasets"][ds_name], results)
        train_s = json.loads((sdir / "metrics.json").read_text())["train_s"]
        (tdir / PARTITIONS_FILE).unlink(missing_ok=True)
        times = []
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            rec = evaluate_run(sdir, tdir, bdir, dataset=ds, evaluation=profile["evaluation"],
                               figure_path=Path(tmp) / f"{label}.png", reuse=False)
            times.append(time.perf_counter() - t0)
    ev = profile["evaluation"]
    print(f"{ds_name} {teacher}->{student} {args.method} s{args.seed}: n_samples={ev['n_samples']} "
          f"probe_train_samples={ev['probe_train_samples']} figures={ev['figures']} threads={args.threads}")
    print(f"train_s (metrics.json): {train_s:8.2f}s")
    print(f"evaluate cold         : {times[0]:8.2f}s  (incl. teacher partitions)  ratio eval/train {times[0] / train_s:.3f}")
    print(f"evaluate warm         : {times[1]:8.2f}s  (partitions cached)         ratio eval/train {times[1] / train_s:.3f}")
    print(f"record: top1={rec['top1']:.4f} agreement={rec['agreement']:.4f} fss={rec['fss']:.4f} "
          f"rs={rec['rs'] if rec['rs'] is None else round(rec['rs'], 4)}")


if __name__ == "__main__":
    main()
