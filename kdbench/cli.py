"""The ``kdbench`` command. Every pipeline rule calls it, so any job can be re-run by hand.

Heavy libraries (torch, mlflow, plotting) are imported inside the commands that use them:
``kdbench --help`` answers at once, and a job's fixed cost stays small.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  kdbench list methods
  kdbench train-teacher --params params/smoke.yaml --dataset shapes --arch resnet20 --seed 0
  kdbench distill --params params/smoke.yaml --dataset shapes --teacher resnet20 \\
      --student resnet8 --method kd --seed 0 --set student_train.epochs=2
  kdbench leaderboard --params params/smoke.yaml
Outputs go to the profile's results_dir (default results/) unless --out is given.
"""


def _common(p: argparse.ArgumentParser, *, run: bool = True) -> None:
    p.add_argument("--params", default="params/default.yaml",
                   help="params profile (YAML); default: %(default)s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, e.g. student_train.epochs=3 (repeatable)")
    if run:
        p.add_argument("--out", type=Path, help="output directory (default: the standard results path)")
        p.add_argument("--tracking", choices=["live", "deferred", "off"], default="live",
                       help="MLflow: log while training (live, default), write the run record to "
                            "mlflow_run.json for `kdbench sync-tracking` (deferred: what the pipeline "
                            "does), or not at all (off)")
        p.add_argument("--force", action="store_true", help="re-train even if finished outputs exist")


def _profile(args):
    from kdbench.config import apply_overrides, load_yaml, validate_profile

    raw = apply_overrides(load_yaml(args.params), args.overrides)
    return validate_profile(raw, source=args.params)


def _profile_ref(args) -> str:
    """The profile as named on this command line (--params and any --set), for hints."""
    import shlex

    return " ".join([shlex.quote(str(args.params))] + [f"--set {shlex.quote(o)}" for o in args.overrides])


def _tracker(profile, args, out: Path):
    from kdbench.tracking import SPOOL_NAME, Tracker

    enabled = profile["tracking"]["enabled"] and args.tracking != "off"
    spool = out / SPOOL_NAME if args.tracking == "deferred" else None
    return Tracker(enabled=enabled, experiment=profile["tracking"]["experiment"], spool=spool)


def _finished(out: Path, cfg) -> bool:
    import json

    m = out / "metrics.json"
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("config_hash") == cfg.config_hash
    except ValueError:
        return False


def _train(args, cfg, out: Path, teacher_path, profile) -> int:
    from kdbench.engine.trainer import run

    if not args.force and _finished(out, cfg):
        print(f"{out} is already finished for this config (use --force to re-train)", file=sys.stderr)
        return 0
    tracker = _tracker(profile, args, out)
    try:
        metrics = run(cfg, out, results_dir=Path(profile["results_dir"]), teacher_path=teacher_path, tracker=tracker)
    except BaseException:
        tracker.finish("FAILED")
        raise
    print(f"top1={metrics['top1']:.4f} top1_sel={metrics['top1_sel']:.4f} -> {out}", file=sys.stderr)
    return 0


def cmd_train_teacher(args) -> int:
    from kdbench.config import check_in_profile, run_paths, teacher_config

    profile = _profile(args)
    check_in_profile(profile, args.dataset, None, args.arch, None)
    cfg = teacher_config(profile, args.dataset, args.arch, args.seed)
    out = args.out or run_paths(profile["results_dir"], "teacher", args.dataset, args.arch, args.seed)
    return _train(args, cfg, Path(out), None, profile)


def cmd_import_teacher(args) -> int:
    from kdbench.config import check_in_profile, run_paths
    from kdbench.teachers import import_teacher

    profile = _profile(args)
    check_in_profile(profile, args.dataset, None, args.arch, None)
    out = Path(args.out or run_paths(profile["results_dir"], "teacher", args.dataset, args.arch, args.seed))
    metrics = import_teacher(profile, args.dataset, args.arch, args.seed, out, params=_profile_ref(args),
                             tracker=_tracker(profile, args, out), force=args.force)
    rep = metrics.get("reported_top1")
    print(f"{args.dataset}/{args.arch}: test top1 {100 * metrics['top1']:.2f}%"
          + (f" (the source reports {100 * rep:.2f}%)" if rep is not None else "") + f" -> {out}", file=sys.stderr)
    return 0


def cmd_fetch_teachers(args) -> int:
    from kdbench.teachers import fetch_teachers, used_teachers

    profile = _profile(args)
    if not used_teachers(profile):
        print(f"{args.params}: the profile names no external teachers (key `teachers`)", file=sys.stderr)
        return 0
    lines = fetch_teachers(profile, download=args.download, params=_profile_ref(args))
    print("\n".join(lines))
    return 0 if all(line.startswith("OK") for line in lines) else 1


def cmd_distill(args) -> int:
    from kdbench.config import check_in_profile, run_paths, student_config

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    cfg = student_config(profile, args.dataset, args.teacher, args.student, args.method, args.seed)
    out = args.out or run_paths(profile["results_dir"], "student", args.dataset, args.student, args.seed,
                                teacher=args.teacher, method=args.method)
    teacher_path = None
    if cfg.teacher is not None:
        teacher_path = args.teacher_model or (run_paths(profile["results_dir"], "teacher", args.dataset,
                                                        args.teacher, cfg.teacher_seed) / "model.pt")
    return _train(args, cfg, Path(out), teacher_path, profile)


def cmd_tune_trial(args) -> int:
    """One tuning trial: a student trained on the trial's candidate values, scored on the
    validation split only (its dataset has no test split). A diverged trial is a result."""
    from kdbench.config import check_in_profile, run_paths
    from kdbench.engine import io as kio
    from kdbench.engine.trainer import CHECKPOINT, NonFiniteLossError, run, trial_metrics
    from kdbench.errors import KDBenchError
    from kdbench.tuning import trial_config, trial_dir, tuning_of

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    if not tuning_of(profile):
        raise KDBenchError(f"{args.params} has no tuning: block (tuning: {{trials: N, seeds: [...]}})")
    cfg = trial_config(profile, args.dataset, args.teacher, args.student, args.method, args.trial, args.seed)
    out = Path(args.out or trial_dir(profile["results_dir"], args.dataset, args.teacher, args.student,
                                     args.method, args.trial, args.seed))
    if not args.force and _finished(out, cfg):
        print(f"{out} is already finished for this config (use --force to re-train)", file=sys.stderr)
        return 0
    teacher_path = None
    if cfg.teacher is not None:
        teacher_path = run_paths(profile["results_dir"], "teacher", args.dataset, args.teacher,
                                 cfg.teacher_seed) / "model.pt"
    try:
        metrics = run(cfg, out, results_dir=Path(profile["results_dir"]), teacher_path=teacher_path, tracker=None)
    except NonFiniteLossError as err:
        metrics = trial_metrics(cfg, val_top1=None, val_top1_best=None, diverged=True, error=str(err))
        kio.write_json(metrics, out / "metrics.json")
        (out / CHECKPOINT).unlink(missing_ok=True)
        print(f"trial {args.trial} diverged ({err}): recorded, it scores lowest -> {out}", file=sys.stderr)
        return 0
    print(f"trial {args.trial} {cfg.hparams} val_top1={metrics['val_top1']:.4f} -> {out}", file=sys.stderr)
    return 0


def cmd_tune_select(args) -> int:
    import json

    from kdbench.config import check_in_profile
    from kdbench.tuning import write_selection

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    path = write_selection(profile, args.dataset, args.teacher, args.student, args.method)
    rec = json.loads(path.read_text())
    print(f"{args.method}: trial {rec['trial']} of {rec['n_trials']} {rec['values']} "
          f"(val {rec['score']}) -> {path}", file=sys.stderr)
    return 0


def cmd_tune_export(args) -> int:
    from kdbench.engine.io import write_text
    from kdbench.tuning import export, export_path

    profile = _profile(args)
    out = args.out or export_path(profile["results_dir"])
    write_text(export(profile, args.params), out)
    print(f"selection of {args.params} -> {out}", file=sys.stderr)
    return 0


def cmd_prepare_data(args) -> int:
    from kdbench.data.cache import load_dataset, prepared_path

    profile = _profile(args)
    from kdbench.config import check_in_profile

    check_in_profile(profile, args.dataset, None, None, None)
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], profile["results_dir"])
    print(f"{args.dataset}: {', '.join(f'{k}={len(v)}' for k, v in ds.splits.items())} "
          f"fingerprint={ds.fingerprint} -> {prepared_path(profile['results_dir'], args.dataset)}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    if args.what == "methods":
        from kdbench.methods import iter_method_names

        names = iter_method_names()
    elif args.what == "archs":
        from kdbench.models import list_models

        names = list_models() + ["timm:<name>  (any timm model of the resnet, mobilenetv3, efficientnet, convnext families)"]
    else:
        from kdbench.data import list_datasets

        names = list_datasets()
    print("\n".join(names))
    return 0


def cmd_validate(args) -> int:
    from kdbench.teachers import verify_teachers

    profile = _profile(args)
    verify_teachers(profile, params=_profile_ref(args))  # external teachers: files, hashes, keys
    from kdbench.tuning import tuned_methods, tuning_of

    cells = len(profile["datasets"]) * len(profile["pairs"])
    n = cells * len(profile["methods"]) * len(profile["seeds"])
    tuning = tuning_of(profile)
    extra = ""
    if tuning:
        trials = cells * len(tuned_methods(profile)) * tuning["trials"] * len(tuning["seeds"])
        extra = f"; tuning: {tuning['trials']} trials x {len(tuning['seeds'])} seeds per tuned method, {trials} trial runs"
    elif profile.get("tuned"):
        extra = f"; hyperparameters from {profile['tuned']}"
    print(f"{args.params}: valid ({n} student runs{extra})")
    return 0


def cmd_evaluate(args) -> int:
    import json

    from kdbench.config import check_in_profile, method_hparams, run_paths
    from kdbench.engine.runtime import select_device, set_threads
    from kdbench.errors import KDBenchError

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    results = Path(profile["results_dir"])
    sdir = run_paths(results, "student", args.dataset, args.student, args.seed, teacher=args.teacher, method=args.method)
    mpath = sdir / "metrics.json"
    if not mpath.is_file():
        raise KDBenchError(f"evaluate: {mpath} not found: run `kdbench distill` for this run first")
    t_seed = json.loads(mpath.read_text()).get("teacher_seed")
    if t_seed is None:  # vanilla runs have no teacher: the pair's teacher as student_config picks it
        t_seed = args.seed if profile.get("teacher_seed") is None else profile["teacher_seed"]
    tdir = run_paths(results, "teacher", args.dataset, args.teacher, t_seed)
    bdir = run_paths(results, "student", args.dataset, args.student, args.seed, teacher=args.teacher, method="vanilla")
    stem = Path(args.dataset) / f"{args.teacher}__{args.student}" / args.method
    out = args.out or results / "evals" / stem / f"s{args.seed}.json"
    fig_dir = args.figures or results / "figures" / stem
    try:
        tdd_hp = method_hparams("tdd", args.teacher, args.student, profile.get("method_params"))
    except KDBenchError:
        tdd_hp = None  # no tdd method installed: the evaluation's defaults (τ = 0.2, k = 20)

    from kdbench.data.cache import load_dataset
    from kdbench.evaluation.run import evaluate_run

    set_threads(profile["threads"])
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], results)
    rec = evaluate_run(sdir, tdir, bdir, dataset=ds, evaluation=profile["evaluation"], out_path=out,
                       figure_path=Path(fig_dir) / f"s{args.seed}_unicam.png", device=select_device(profile["device"]),
                       teacher_seed=t_seed, tdd_hparams=tdd_hp)
    shown = " ".join(f"{k}={rec[k]:.4f}" for k in ("top1", "agreement", "expl_sim", "fss", "rs", "decision_consistency")
                     if isinstance(rec.get(k), float))
    print(f"{shown} ({rec['eval_s']:.1f}s) -> {out}", file=sys.stderr)
    return 0


def cmd_leaderboard(args) -> int:
    from kdbench.leaderboard import build

    profile = _profile(args)
    paths = build(profile, args.params, args.out, strict=args.strict, figures=not args.no_figures,
                  tracking=profile["tracking"]["enabled"] and not args.no_tracking)
    print(f"leaderboard -> {paths['board'].parent}/ ({', '.join(p.name for p in paths.values() if p.exists())})",
          file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from kdbench.leaderboard import collect_records, compare, format_compare, runs_frame

    if args.runs:
        import pandas as pd

        if not args.runs.is_file():
            from kdbench.errors import KDBenchError

            raise KDBenchError(f"{args.runs} not found (it is the board's runs.csv: run the pipeline first)")
        runs = pd.read_csv(args.runs)
    else:
        runs = runs_frame(collect_records(_profile(args)))
    table = compare(runs, args.method, metric=args.metric, others=args.vs or None)
    if args.format == "csv":
        sys.stdout.write(table.to_csv(index=False, float_format="%.6g", na_rep=""))
    elif args.format == "json":
        sys.stdout.write(table.to_json(orient="records", indent=2) + "\n")
    else:
        sys.stdout.write(format_compare(table, args.metric, args.alpha))
    return 0


def cmd_sync_tracking(args) -> int:
    from kdbench.tracking import sync_spools

    counts = sync_spools(args.results)
    print(f"MLflow: {counts['synced']} run(s) synced, {counts['already']} already, {counts['failed']} failed",
          file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


def cmd_init_tracking(args) -> int:
    from kdbench.tracking import init_store

    uri = init_store(args.experiment)
    print(f"MLflow store ready: {uri} (experiment {args.experiment!r})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdbench", description="kdbench: a reproducible knowledge-distillation benchmark.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list registered methods, architectures or datasets")
    p.add_argument("what", choices=["methods", "archs", "datasets"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("validate", help="check a params profile without running anything")
    _common(p, run=False)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare-data", help="build a dataset once and store its tensors under results/data/")
    _common(p, run=False)
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train-teacher", help="train a teacher (the vanilla recipe on the teacher arch)",
                       description="Train a teacher with the profile's teacher_train recipe. Resumes from its "
                                   "checkpoint if interrupted.")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True, help="architecture (kdbench list archs)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("import-teacher", help="use an external teacher checkpoint (the profile's `teachers`)",
                       description="Load the checkpoint the profile names for (DATASET, ARCH) under `teachers` "
                                   "(RepDistiller/mdistiller layout; torch.load weights_only), check its sha256 and "
                                   "keys, measure its test accuracy once and write the train-teacher outputs "
                                   "(model.pt, metrics.json with top1, reported_top1 and source).")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True, help="architecture (kdbench list archs)")
    p.add_argument("--seed", type=int, default=0, help="the teacher seed directory to write (s<seed>)")
    p.set_defaults(func=cmd_import_teacher)

    p = sub.add_parser("fetch-teachers", help="check (and with --download, fetch) a profile's external teachers",
                       description="For every external teacher the profile uses: say whether its file is where "
                                   "kdbench looks, and check its sha256 and keys. Only with --download (and "
                                   "internet) are missing files fetched from their url.")
    _common(p, run=False)
    p.add_argument("--download", action="store_true", help="download missing files from their url")
    p.set_defaults(func=cmd_fetch_teachers)

    p = sub.add_parser("distill", help="train a student with a distillation method",
                       description="Distil TEACHER into STUDENT with METHOD (vanilla = the student alone) using "
                                   "the profile's student_train recipe and params/methods/METHOD.yaml. The teacher "
                                   "must have been trained (train-teacher). Resumes from its checkpoint.")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--method", required=True, help="method name (kdbench list methods)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-model", type=Path, help="teacher model.pt (default: the standard results path)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("tune-trial", help="one hyperparameter-tuning trial, scored on the validation split",
                       description="Train trial TRIAL of the profile's tuning (tuning: {trials, seeds}) for one "
                                   "dataset, pair and method: trial 0 = the paper values, then the method's search "
                                   "space (params/methods/METHOD.yaml search:). The test split is never read. "
                                   "Writes results/tuning/D/T__S/M/tK/sN/metrics.json.")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--method", required=True, help="method name (kdbench list methods)")
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="one of the profile's tuning.seeds")
    p.set_defaults(func=cmd_tune_trial)

    p = sub.add_parser("tune-select", help="pick the trial with the best validation accuracy",
                       description="Read every trial of one dataset, pair and method and write selection.json: "
                                   "every trial's values and validation accuracy, and the winner (highest mean over "
                                   "the tuning seeds; ties: the lowest trial number).")
    _common(p, run=False)
    p.add_argument("--dataset", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--method", required=True)
    p.set_defaults(func=cmd_tune_select)

    p = sub.add_parser("tune-export", help="all of a profile's selections as one file (params/tuned/*.yaml)",
                       description="Collect the selections of a tuning profile into one YAML file with its "
                                   "provenance (trials, seeds, every trial's validation accuracy). A profile uses it "
                                   "with tuned: FILE.")
    _common(p, run=False)
    p.add_argument("--out", type=Path, help="output file (default: RESULTS_DIR/tuning/tuned.yaml)")
    p.set_defaults(func=cmd_tune_export)

    p = sub.add_parser("evaluate", help="interpretability + accuracy evaluation of one student run",
                       description="Evaluate a trained student run (and its teacher and vanilla base): accuracy, "
                                   "agreement, Grad-CAM similarity and EPG, FSS/RS, UniCAM, decision consistency, "
                                   "FLOPs. Writes results/evals/D/T__S/M/sN.json and a UniCAM/Grad-CAM grid PNG.")
    _common(p, run=False)
    p.add_argument("--dataset", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--method", required=True, help="method name (kdbench list methods)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output JSON file (default: results/evals/D/T__S/M/sN.json)")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="directory for the sN_unicam.png grid (default: results/figures/D/T__S/M/)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("leaderboard", help="aggregate the evaluated runs into results/leaderboard/",
                       description="Read every evaluated run of the profile (results/evals/) and write "
                                   "results/leaderboard/: runs.csv (one row per seed), leaderboard.csv (mean/std over "
                                   "seeds, deltas vs kd and vanilla), leaderboard.md/.tex/.html, claims.csv/.md, "
                                   "metrics.json (DVC) and the figures; logs the tables to MLflow.")
    _common(p, run=False)
    p.add_argument("--out", type=Path, help="output directory (default: RESULTS_DIR/leaderboard)")
    p.add_argument("--strict", action="store_true", help="fail if a run of the profile has no evaluation yet")
    p.add_argument("--no-figures", action="store_true", help="skip the seaborn figures")
    p.add_argument("--no-tracking", action="store_true", help="do not log the board to MLflow")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("compare", help="one method against every other on the same cells (Welch t-test)",
                       description="Compare METHOD with every other method on the same dataset and teacher/student "
                                   "pair: mean difference over seeds and Welch's t-test p-value.",
                       epilog="example: kdbench compare e2kd --params params/default.yaml --metric top1_ood")
    _common(p, run=False)
    p.add_argument("method", help="the method to compare (must be on the board)")
    p.add_argument("--metric", default="top1", help="per-run metric (runs.csv column); default: %(default)s")
    p.add_argument("--vs", nargs="+", metavar="METHOD", help="only these other methods")
    p.add_argument("--runs", type=Path, help="a runs.csv to read instead of the profile's evaluations")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level marked with *; default: %(default)s")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sync-tracking", help="log deferred run records (mlflow_run.json) to MLflow")
    p.add_argument("--results", type=Path, default=Path("results"), help="where to look (default: %(default)s)")
    p.set_defaults(func=cmd_sync_tracking)

    p = sub.add_parser("init-tracking", help="create the MLflow store once (the pipeline does this first)")
    p.add_argument("--experiment", default="kdbench")
    p.set_defaults(func=cmd_init_tracking)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from kdbench.errors import KDBenchError

    try:
        return int(args.func(args) or 0)
    except KDBenchError as err:
        print(f"kdbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
