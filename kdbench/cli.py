"""The ``kdbench`` command. Every pipeline rule calls it, so any job can be re-run by hand.

Heavy libraries (torch, mlflow, plotting) are imported inside the commands that use them:
``kdbench --help`` answers at once, and a job's fixed cost stays small.
"""
from __future__ import annotations

import argparse
import shlex
import signal
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


MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """argparse type of --seed: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a seed >= 0, e.g. --seed 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a seed >= 0, e.g. --seed 0")
    if value > MAX_SEED:  # numpy's and torch's generators take 32-bit seeds
        raise argparse.ArgumentTypeError(f"{value} is too large; give a seed from 0 to {MAX_SEED}")
    return value


def _profile(args):
    from kdbench.profile import load_profile_with_overrides

    return load_profile_with_overrides(args.params, args.overrides)


def command_line(args, command: str, **options) -> str:
    """A complete ``kdbench COMMAND`` line for the same profile and --set overrides (so that
    the params, the seed and the dataset options are the ones this command used)."""
    parts = ["kdbench", command, "--params", args.params]
    for key, value in options.items():
        if value is True:
            parts.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    for item in getattr(args, "overrides", None) or []:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


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
    """Both final outputs exist, and both say they belong to this config (the same test
    a student applies to its teacher's model.pt)."""
    import json

    from kdbench.engine.trainer import model_config_hash

    m = out / "metrics.json"
    if not m.is_file() or not (out / "model.pt").is_file():
        return False
    try:
        if json.loads(m.read_text()).get("config_hash") != cfg.config_hash:
            return False
    except ValueError:
        return False
    return model_config_hash(out / "model.pt") == cfg.config_hash


def _refuse_foreign(out: Path, cfg) -> None:
    """A run directory never gets a run of another config unless asked: a finished run
    there (its metrics.json) of another config hash is refused, naming --force and --out."""
    import json

    from kdbench.errors import KDBenchError

    try:
        found = json.loads((out / "metrics.json").read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return  # nothing finished there (or a damaged file, which the run replaces)
    if found is not None and found != cfg.config_hash:
        raise KDBenchError(f"{out} holds a finished run of another config (config_hash {found}; this command's is "
                           f"{cfg.config_hash}): give --out DIR (or a profile with another results_dir) to train "
                           f"this one elsewhere, or --force to replace that run")


def _check_profile_seed(profile, args, seed: int, seeds, what: str) -> None:
    """A run written into the profile's results (no --out) has one of the profile's seeds:
    another seed's run would sit in its tree, where its board and its jobs look."""
    from kdbench.errors import KDBenchError

    if args.out is None and seed not in seeds:
        raise KDBenchError(f"{what} {seed} is not one of this profile's ({args.params}) {what}s {sorted(seeds)}: its "
                           f"run would be written into the profile's results ({profile['results_dir']}); give --out "
                           f"DIR for a run of your own, or add the seed to the profile")


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, Snakemake stopping its jobs), raised in the main thread."""


def _on_sigterm(signum, frame):
    raise Interrupted()


def _train(args, cfg, out: Path, teacher_path, profile, **expect) -> int:
    import os
    from contextlib import nullcontext

    from kdbench.io import JobLock

    # one job per output directory, held for the job's life (rank 0 of a torchrun job)
    with JobLock(out) if os.environ.get("RANK", "0") == "0" else nullcontext():
        return _train_locked(args, cfg, out, teacher_path, profile, **expect)


def _train_locked(args, cfg, out: Path, teacher_path, profile, **expect) -> int:
    from kdbench.engine.trainer import run

    if not args.force and _finished(out, cfg):
        print(f"{out} is already finished for this config (use --force to re-train)", file=sys.stderr)
        return 0
    if not args.force:
        _refuse_foreign(out, cfg)
    # under `torchrun --nproc-per-node N`: one data-parallel job (kdbench.engine.distributed)
    from kdbench.engine import distributed as kdist

    world = kdist.init_from_env(profile["device"])
    main = world is None or world.is_main
    tracker = _tracker(profile, args, out) if main else None  # rank 0 alone records
    try:
        metrics = run(cfg, out, results_dir=Path(profile["results_dir"]), teacher_path=teacher_path, tracker=tracker,
                      **expect)
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    finally:
        kdist.shutdown()
    if main:
        print(f"top1={metrics['top1']:.4f} top1_sel={metrics['top1_sel']:.4f} -> {out}", file=sys.stderr)
    return 0


def cmd_train_teacher(args) -> int:
    from kdbench.config import run_paths, teacher_config
    from kdbench.profile import check_in_profile

    profile = _profile(args)
    check_in_profile(profile, args.dataset, None, args.arch, None)
    # teacher_seed null: each student seed's (and each tuning seed's) own teacher
    teacher_seeds = ([*profile["seeds"], *((profile.get("tuning") or {}).get("seeds") or [])]
                     if profile.get("teacher_seed") is None else [profile["teacher_seed"]])
    _check_profile_seed(profile, args, args.seed, teacher_seeds, "teacher seed")
    cfg = teacher_config(profile, args.dataset, args.arch, args.seed)
    out = args.out or run_paths(profile["results_dir"], "teacher", args.dataset, args.arch, args.seed)
    return _train(args, cfg, Path(out), None, profile)


def cmd_import_teacher(args) -> int:
    from kdbench.config import run_paths
    from kdbench.profile import check_in_profile
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
    from kdbench.config import run_paths, teacher_config
    from kdbench.hparams import student_config
    from kdbench.profile import check_in_profile

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    _check_profile_seed(profile, args, args.seed, profile["seeds"], "seed")
    cfg = student_config(profile, args.dataset, args.teacher, args.student, args.method, args.seed)
    out = args.out or run_paths(profile["results_dir"], "student", args.dataset, args.student, args.seed,
                                teacher=args.teacher, method=args.method)
    teacher_path, expect = None, {}
    if cfg.teacher is not None:
        teacher_path = args.teacher_model or (run_paths(profile["results_dir"], "teacher", args.dataset,
                                                        args.teacher, cfg.teacher_seed) / "model.pt")
        # the teacher this profile implies: a model.pt trained with another recipe (another
        # profile, an edited teacher_train) is refused, never used silently
        from kdbench.teachers import external_teacher, file_sha256, import_identity

        ext = external_teacher(profile, args.dataset, args.teacher)
        if ext is None:
            expect = {"teacher_hash": teacher_config(profile, args.dataset, args.teacher, cfg.teacher_seed).config_hash,
                      "teacher_command": command_line(args, "train-teacher", dataset=args.dataset, arch=args.teacher,
                                                      seed=cfg.teacher_seed)}
        else:  # an external checkpoint (profile key `teachers`): its import's identity
            digest = (ext.sha256 or "").lower() or (file_sha256(ext.path) if ext.path.is_file() else None)
            expect = {"teacher_hash": import_identity(ext, digest, profile["datasets"][args.dataset]) if digest else None,
                      "teacher_command": command_line(args, "import-teacher", dataset=args.dataset, arch=args.teacher,
                                                      seed=cfg.teacher_seed)}
        if args.teacher_model:  # a teacher given by hand: the user vouches for it
            expect["teacher_hash"] = None
    return _train(args, cfg, Path(out), teacher_path, profile, **expect)


def cmd_tune_trial(args) -> int:
    """One tuning trial: a student trained on the trial's candidate values, scored on the
    validation split only (its dataset has no test split). A diverged trial is a result."""
    from kdbench.config import run_paths
    from kdbench.profile import check_in_profile
    from kdbench import io as kio
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
    # under `torchrun --nproc-per-node N`: one data-parallel job, as _train
    from kdbench.engine import distributed as kdist

    world = kdist.init_from_env(profile["device"])
    main = world is None or world.is_main
    try:
        metrics = run(cfg, out, results_dir=Path(profile["results_dir"]), teacher_path=teacher_path, tracker=None)
    except NonFiniteLossError as err:
        if main:
            metrics = trial_metrics(cfg, val_top1=None, val_top1_best=None, diverged=True, error=str(err))
            kio.write_json(metrics, out / "metrics.json")
            (out / CHECKPOINT).unlink(missing_ok=True)
            print(f"trial {args.trial} diverged ({err}): recorded, it scores lowest -> {out}", file=sys.stderr)
        return 0
    finally:
        kdist.shutdown()
    if main:
        print(f"trial {args.trial} {cfg.hparams} val_top1={metrics['val_top1']:.4f} -> {out}", file=sys.stderr)
    return 0


def cmd_tune_select(args) -> int:
    import json

    from kdbench.profile import check_in_profile
    from kdbench.tuning import write_selection

    profile = _profile(args)
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    path = write_selection(profile, args.dataset, args.teacher, args.student, args.method)
    rec = json.loads(path.read_text())
    print(f"{args.method}: trial {rec['trial']} of {rec['n_trials']} {rec['values']} "
          f"(val {rec['score']}) -> {path}", file=sys.stderr)
    return 0


def cmd_tune_export(args) -> int:
    from kdbench.io import write_text
    from kdbench.tuning import export, export_path

    profile = _profile(args)
    out = args.out or export_path(profile["results_dir"])
    write_text(export(profile, args.params), out)
    print(f"selection of {args.params} -> {out}", file=sys.stderr)
    return 0


def cmd_prepare_data(args) -> int:
    from kdbench.data.cache import load_dataset, prepared_path

    profile = _profile(args)
    from kdbench.profile import check_in_profile

    check_in_profile(profile, args.dataset, None, None, None)
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], profile["results_dir"], rebuild=True)
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

    from kdbench.board.records import expected_runs

    n = len(expected_runs(profile))
    tuning = tuning_of(profile)
    extra = ""
    if tuning:
        trials = (len(profile["datasets"]) * sum(len(tuned_methods(profile, p)) for p in profile["pairs"])
                  * tuning["trials"] * len(tuning["seeds"]))
        extra = f"; tuning: {tuning['trials']} trials x {len(tuning['seeds'])} seeds per tuned method, {trials} trial runs"
    elif profile.get("tuned"):
        extra = f"; hyperparameters from {profile['tuned']}"
    print(f"{args.params}: valid ({n} student runs{extra})")
    return 0


def cmd_evaluate(args) -> int:
    """Evaluate one student run, or several methods of one dataset x pair x seed in one
    process (``--method a b c``: what the pipeline does, one job per cell and seed, so the
    interpreter, the data and the teacher are loaded once for all of them)."""
    import json

    from kdbench.config import run_paths
    from kdbench.hparams import method_hparams
    from kdbench.profile import check_in_profile
    from kdbench.engine.runtime import select_device, set_threads
    from kdbench.errors import KDBenchError
    from kdbench.integrity import require_whole

    profile = _profile(args)
    methods = list(dict.fromkeys(args.method))
    if len(methods) > 1 and (args.out or args.figures):
        raise KDBenchError("evaluate: --out/--figures name one run's files: give one --method with them")
    for method in methods:
        check_in_profile(profile, args.dataset, args.teacher, args.student, method)
    results = Path(profile["results_dir"])
    runs = []
    for method in methods:  # every run must be trained before any work starts
        sdir = run_paths(results, "student", args.dataset, args.student, args.seed, teacher=args.teacher, method=method)
        if not (sdir / "metrics.json").is_file():
            todo = command_line(args, "distill", dataset=args.dataset, teacher=args.teacher, student=args.student,
                                method=method, seed=args.seed)
            raise KDBenchError(f"evaluate: {sdir / 'metrics.json'} not found: train this run first: {todo}")
        for name in ("metrics.json", "model.pt"):  # truncated or corrupt: named, with the command that redoes it
            require_whole(sdir / name, command_line(args, "distill", dataset=args.dataset, teacher=args.teacher,
                                                    student=args.student, method=method, seed=args.seed, force=True))
        runs.append((method, sdir))
    bdir = run_paths(results, "student", args.dataset, args.student, args.seed, teacher=args.teacher, method="vanilla")
    try:
        tdd_hp = method_hparams("tdd", args.teacher, args.student, profile.get("method_params"))
    except KDBenchError:
        tdd_hp = None  # no tdd method installed: the evaluation's defaults

    from kdbench.data.cache import load_dataset
    from kdbench.evaluation.run import evaluate_run

    set_threads(profile["threads"])
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], results)
    device = select_device(profile["device"])
    for method, sdir in runs:
        t_seed = json.loads((sdir / "metrics.json").read_text()).get("teacher_seed")
        if t_seed is None:  # vanilla runs have no teacher: the pair's teacher as student_config picks it
            t_seed = args.seed if profile.get("teacher_seed") is None else profile["teacher_seed"]
        tdir = run_paths(results, "teacher", args.dataset, args.teacher, t_seed)
        stem = Path(args.dataset) / f"{args.teacher}__{args.student}" / method
        out = args.out or results / "evals" / stem / f"s{args.seed}.json"
        fig_dir = args.figures or results / "figures" / stem
        rec = evaluate_run(sdir, tdir, bdir, dataset=ds, evaluation=profile["evaluation"], out_path=out,
                           figure_path=Path(fig_dir) / f"s{args.seed}_unicam.png", device=device,
                           teacher_seed=t_seed, tdd_hparams=tdd_hp, reuse=not args.no_reuse)
        shown = " ".join(f"{k}={rec[k]:.4f}" for k in ("top1", "agreement", "expl_sim", "fss", "rs",
                                                       "decision_consistency") if isinstance(rec.get(k), float))
        print(f"{method}: {shown} ({rec['eval_s']:.1f}s) -> {out}", file=sys.stderr)
    return 0


def cmd_leaderboard(args) -> int:
    from kdbench.leaderboard import build

    profile = _profile(args)
    paths = build(profile, args.params, args.out, strict=args.strict, figures=not args.no_figures,
                  tracking=profile["tracking"]["enabled"] and not args.no_tracking, published_dir=args.published,
                  params_ref=_profile_ref(args), metric=args.metric)
    print(f"leaderboard -> {paths['board'].parent}/ ({', '.join(p.name for p in paths.values() if p.exists())})",
          file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from kdbench.board.compare import report
    from kdbench.board.records import collect_records, runs_frame

    if args.runs:
        import pandas as pd

        if not args.runs.is_file():
            from kdbench.errors import KDBenchError

            raise KDBenchError(f"{args.runs} not found (it is the board's runs.csv: run the pipeline first)")
        runs = pd.read_csv(args.runs)
    else:
        runs = runs_frame(collect_records(_profile(args)))
    sys.stdout.write(report(runs, args.method, args.metric, args.vs or None, args.format, args.alpha,
                            source=str(args.runs) if args.runs else _profile_ref(args)))
    return 0


def cmd_sync_tracking(args) -> int:
    from kdbench.tracking import sync_spools

    counts = sync_spools(args.results)
    print(f"MLflow: {counts['synced']} run(s) synced, {counts['already']} already, {counts['failed']} failed",
          file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


def cmd_init_tracking(args) -> int:
    from kdbench.tracking import init_store

    uri = init_store(args.experiment, wait_s=args.wait)
    print(f"MLflow store ready: {uri} (experiment {args.experiment!r})", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the usage text is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("import-teacher", help="use an external teacher checkpoint (the profile's `teachers`)",
                       description="Load the checkpoint the profile names for (DATASET, ARCH) under `teachers` "
                                   "(RepDistiller/mdistiller layout; torch.load weights_only), check its sha256 and "
                                   "keys, measure its test accuracy once and write the train-teacher outputs "
                                   "(model.pt, metrics.json with top1, reported_top1 and source).")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True, help="architecture (kdbench list archs)")
    p.add_argument("--seed", type=_seed, default=0, help="the teacher seed directory to write (s<seed>)")
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
    p.add_argument("--seed", type=_seed, default=0)
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
    p.add_argument("--seed", type=_seed, required=True, help="one of the profile's tuning.seeds")
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
    p.add_argument("--method", required=True, nargs="+",
                   help="method name(s) (kdbench list methods); several are evaluated one after another in this "
                        "process (what the pipeline does: one job per dataset x pair x seed)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, help="output JSON file (default: results/evals/D/T__S/M/sN.json)")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="directory for the sN_unicam.png grid (default: results/figures/D/T__S/M/)")
    p.add_argument("--no-reuse", action="store_true",
                   help="evaluate every run again, even one whose kept record (eval_record.json beside the "
                        "student) was computed from exactly the same inputs")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("leaderboard", help="aggregate the evaluated runs into results/leaderboard/",
                       description="Read every evaluated run of the profile (results/evals/) and write "
                                   "results/leaderboard/: runs.csv (one row per seed), leaderboard.csv (mean/std over "
                                   "seeds, teacher row, paired deltas vs kd and vanilla with 95 % CI and Holm p), "
                                   "leaderboard.md/.tex/.html, claims.csv/.md (with the scorecard), "
                                   "metrics.json (DVC) and the figures; logs the tables to MLflow.")
    _common(p, run=False)
    p.add_argument("--out", type=Path, help="output directory (default: RESULTS_DIR/leaderboard)")
    p.add_argument("--strict", action="store_true", help="fail if a run of the profile has no evaluation yet")
    p.add_argument("--no-figures", action="store_true", help="skip the seaborn figures")
    p.add_argument("--no-tracking", action="store_true", help="do not log the board to MLflow")
    p.add_argument("--published", type=Path, default=Path("params") / "published", metavar="DIR",
                   help="where published numbers (DATASET.yaml) are looked up; default: %(default)s")
    p.add_argument("--metric", default="agreement",
                   help="second metric of the performance profile, beside top1 (runs.csv column); default: %(default)s")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("compare", help="one method against every other on the same cells (paired t-test, Holm)",
                       description="Compare METHOD with every other method on the same dataset and teacher/student "
                                   "pair: the paired mean difference over seeds with its 95 % CI and paired t-test "
                                   "p-value (Welch's where the seeds do not pair), Holm-corrected within the board's "
                                   "family (every pairwise comparison of a cell's methods); then METHOD's overall "
                                   "rank with its interval and its wins / ties / losses.",
                       epilog="example: kdbench compare e2kd --params params/default.yaml --metric top1_ood")
    _common(p, run=False)
    p.add_argument("method", help="the method to compare (must be on the board)")
    p.add_argument("--metric", default="top1", help="per-run metric (runs.csv column); default: %(default)s")
    p.add_argument("--vs", nargs="+", metavar="METHOD", help="only these other methods")
    p.add_argument("--runs", type=Path, help="a runs.csv to read instead of the profile's evaluations")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--alpha", type=float, default=0.05, help="level for the Holm-corrected p marked with *; default: %(default)s")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sync-tracking", help="log deferred run records (mlflow_run.json) to MLflow")
    p.add_argument("--results", type=Path, default=Path("results"), help="where to look (default: %(default)s)")
    p.set_defaults(func=cmd_sync_tracking)

    p = sub.add_parser("init-tracking", help="create the MLflow store once (the pipeline does this first)")
    p.add_argument("--experiment", default="kdbench")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait this long for a store that another process holds; default: %(default)s")
    p.set_defaults(func=cmd_init_tracking)
    return parser


def _fix(args, err) -> str:
    """The complete command that fixes ``err``, for errors that have one."""
    from kdbench.data.cache import DataCacheError

    if isinstance(err, DataCacheError) and hasattr(args, "params"):
        return (f"; rebuild it: {command_line(args, 'prepare-data', dataset=err.dataset)} "
                f"(the pipeline does this itself)")
    return ""


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from kdbench.errors import KDBenchError

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except KDBenchError as err:
        print(f"kdbench: error: {str(err).strip()}{_fix(args, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # quiet: no traceback. A training job resumes from its last epoch checkpoint.
        what = "terminated" if isinstance(err, Interrupted) else "interrupted"
        print(f"kdbench: {what}; run the same command again to continue (a training job resumes from "
              f"its last epoch's checkpoint)", file=sys.stderr, flush=True)
        return 143 if isinstance(err, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
