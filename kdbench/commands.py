"""What each ``kdbench`` subcommand does, as functions a test can call (benchopt's thin
commands over a runner): :mod:`kdbench.cli` parses the command line, calls one function
here with the parsed options (an ``argparse.Namespace``, or any object with the same
attributes) and prints the :class:`Outcome`. The domain checks live in the modules that
own them (profiles: :mod:`kdbench.profile`; run folders: :mod:`kdbench.engine.run_dir`;
teachers: :mod:`kdbench.teachers`; paths: :mod:`kdbench.config.layout`).

This is the top of the library: it may import every layer below it (docs/architecture.md).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from kdbench import io as kio
from kdbench.board import build as build_board
from kdbench.board.compare import report
from kdbench.board.hparams_mix import compare_warning
from kdbench.board.records import collect_records, expected_runs, runs_frame
from kdbench.config import layout
from kdbench.config.loading import load_yaml, teacher_seed_of
from kdbench.config.run import teacher_config
from kdbench.data import list_datasets
from kdbench.data.cache import DataCacheError, load_dataset
from kdbench.engine import distributed as kdist
from kdbench.engine.run_dir import check_not_foreign, is_finished
from kdbench.engine.runtime import select_device, set_threads
from kdbench.engine.trainer import CHECKPOINT, NonFiniteLossError, run, trial_metrics
from kdbench.errors import KDBenchError
from kdbench.evaluation.run import evaluate_run
from kdbench.hparams import method_hparams, student_config
from kdbench.hparams import resolve as resolve_params_path
from kdbench.integrity import require_whole
from kdbench.methods import iter_method_names
from kdbench.models import list_models
from kdbench.profile import check_in_profile, load_profile_with_overrides
from kdbench.teachers import expected_teacher, fetch_teachers, import_teacher, used_teachers, verify_teachers
from kdbench.tracking import SPOOL_NAME, Tracker, init_store, sync_spools
from kdbench.tuning import (export, merge_entries, restricted_profile, selection_entries, trial_config,
                            tuned_methods, tuning_of, write_selection)


@dataclass
class Outcome:
    """What a command prints (``stdout``: its result; ``stderr``: where it went) and its
    exit status."""

    stderr: str = ""
    stdout: str = ""
    rc: int = 0


# --------------------------------------------------------------------------- shared
def profile_of(args, methods=None) -> dict:
    """The command's profile, validated; ``methods``: a job checks only the methods it runs
    (``kdbench.profile.validate_profile``)."""
    return load_profile_with_overrides(args.params, args.overrides, methods)


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


def profile_ref(args) -> str:
    """The profile as named on this command line (--params and any --set), for hints."""
    return " ".join([shlex.quote(str(args.params))] + [f"--set {shlex.quote(o)}" for o in args.overrides])


def fix_hint(args, err) -> str:
    """The complete command that fixes ``err``, for errors that have one."""
    if isinstance(err, DataCacheError) and hasattr(args, "params"):
        return (f"; rebuild it: {command_line(args, 'prepare-data', dataset=err.dataset)} "
                f"(the pipeline does this itself)")
    return ""


def _tracker(profile, args, out: Path) -> Tracker:
    enabled = profile["tracking"]["enabled"] and args.tracking != "off"
    spool = out / SPOOL_NAME if args.tracking == "deferred" else None
    return Tracker(enabled=enabled, experiment=profile["tracking"]["experiment"], spool=spool)


def _check_profile_seed(profile, args, seed: int, seeds, what: str) -> None:
    """A run written into the profile's results (no --out) has one of the profile's seeds:
    another seed's run would sit in its tree, where its board and its jobs look."""
    if args.out is None and seed not in seeds:
        raise KDBenchError(f"{what} {seed} is not one of this profile's ({args.params}) {what}s {sorted(seeds)}: its "
                           f"run would be written into the profile's results ({profile['results_dir']}); give --out "
                           f"DIR for a run of your own, or add the seed to the profile")


def _already(out: Path) -> Outcome:
    return Outcome(stderr=f"{out} is already finished for this config (use --force to re-train)")


# --------------------------------------------------------------------------- training jobs
def _train_job(profile, cfg, out: Path, teacher_path, tracker_of, on_diverge=None, **expect):
    """One training job, alone or as one data-parallel job under torchrun
    (kdbench.engine.distributed): (metrics or None, is_main). Rank 0 alone records;
    ``on_diverge(err)`` (tuning trials) turns a diverged loss into a result."""
    world = kdist.init_from_env(profile["device"])
    main = world is None or world.is_main
    tracker = tracker_of() if main and tracker_of is not None else None
    try:
        return run(cfg, out, results_dir=Path(profile["results_dir"]), teacher_path=teacher_path, tracker=tracker,
                   **expect), main
    except NonFiniteLossError as err:
        if on_diverge is None:
            _finish_tracker(tracker, "FAILED")
            raise
        if main:
            on_diverge(err)
        return None, main
    except KeyboardInterrupt:
        _finish_tracker(tracker, "KILLED")
        raise
    except BaseException:
        _finish_tracker(tracker, "FAILED")
        raise
    finally:
        kdist.shutdown()


def _finish_tracker(tracker, status: str) -> None:
    if tracker is not None:
        tracker.finish(status)


def _train(args, cfg, out: Path, teacher_path, profile, **expect) -> Outcome:
    """A teacher's or a student's training job in its run folder: one job per folder
    (a lock held for the job's life by rank 0), a finished run of this config kept, a
    finished run of another config refused (unless --force)."""
    with kio.JobLock(out) if os.environ.get("RANK", "0") == "0" else nullcontext():
        if not args.force and is_finished(out, cfg):
            return _already(out)
        if not args.force:
            check_not_foreign(out, cfg)
        metrics, main = _train_job(profile, cfg, out, teacher_path, lambda: _tracker(profile, args, out), **expect)
    if not main:
        return Outcome()
    return Outcome(stderr=f"top1={metrics['top1']:.4f} top1_sel={metrics['top1_sel']:.4f} -> {out}")


def train_teacher(args) -> Outcome:
    profile = profile_of(args, [])
    check_in_profile(profile, args.dataset, None, args.arch, None)
    # teacher_seed null: each student seed's (and each tuning seed's) own teacher
    teacher_seeds = ([*profile["seeds"], *((profile.get("tuning") or {}).get("seeds") or [])]
                     if profile.get("teacher_seed") is None else [profile["teacher_seed"]])
    _check_profile_seed(profile, args, args.seed, teacher_seeds, "teacher seed")
    cfg = teacher_config(profile, args.dataset, args.arch, args.seed)
    out = args.out or layout.run_dir(profile["results_dir"], "teacher", args.dataset, args.arch, args.seed)
    return _train(args, cfg, Path(out), None, profile)


def distill(args) -> Outcome:
    profile = profile_of(args, [args.method])
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    _check_profile_seed(profile, args, args.seed, profile["seeds"], "seed")
    cfg = student_config(profile, args.dataset, args.teacher, args.student, args.method, args.seed)
    out = args.out or layout.run_dir(profile["results_dir"], "student", args.dataset, args.student, args.seed,
                                     teacher=args.teacher, method=args.method)
    teacher_path, expect = None, {}
    if cfg.teacher is not None:
        teacher_path = args.teacher_model or layout.teacher_model(profile["results_dir"], args.dataset,
                                                                  args.teacher, cfg.teacher_seed)
        # the teacher this profile implies: a model.pt of another recipe is refused, never used silently
        teacher_hash, command = expected_teacher(profile, args.dataset, args.teacher, cfg.teacher_seed)
        expect = {"teacher_hash": None if args.teacher_model else teacher_hash,  # by hand: the user vouches
                  "teacher_command": command_line(args, command, dataset=args.dataset, arch=args.teacher,
                                                  seed=cfg.teacher_seed)}
    return _train(args, cfg, Path(out), teacher_path, profile, **expect)


def tune_trial(args) -> Outcome:
    """One tuning trial: a student trained on the trial's candidate values, scored on the
    validation split only (its dataset has no test split). A diverged trial is a result."""
    profile = profile_of(args, [args.method])
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    if not tuning_of(profile):
        raise KDBenchError(f"{args.params} has no tuning: block (tuning: {{trials: N, seeds: [...]}})")
    cfg = trial_config(profile, args.dataset, args.teacher, args.student, args.method, args.trial, args.seed)
    out = Path(args.out or layout.trial_dir(profile["results_dir"], args.dataset, args.teacher, args.student,
                                            args.method, args.trial, args.seed))
    if not args.force and is_finished(out, cfg):
        return _already(out)
    teacher_path = None
    if cfg.teacher is not None:
        teacher_path = layout.teacher_model(profile["results_dir"], args.dataset, args.teacher, cfg.teacher_seed)
    diverged = []

    def record_divergence(err) -> None:
        kio.write_json(trial_metrics(cfg, val_top1=None, val_top1_best=None, diverged=True, error=str(err)),
                       out / layout.METRICS)
        (out / CHECKPOINT).unlink(missing_ok=True)
        diverged.append(err)

    metrics, main = _train_job(profile, cfg, out, teacher_path, None, on_diverge=record_divergence)
    if diverged:
        return Outcome(stderr=f"trial {args.trial} diverged ({diverged[0]}): recorded, it scores lowest -> {out}")
    if not main:
        return Outcome()
    return Outcome(stderr=f"trial {args.trial} {cfg.hparams} val_top1={metrics['val_top1']:.4f} -> {out}")


def import_teacher_run(args) -> Outcome:
    profile = profile_of(args)
    check_in_profile(profile, args.dataset, None, args.arch, None)
    out = Path(args.out or layout.run_dir(profile["results_dir"], "teacher", args.dataset, args.arch, args.seed))
    metrics = import_teacher(profile, args.dataset, args.arch, args.seed, out, params=profile_ref(args),
                             tracker=_tracker(profile, args, out), force=args.force)
    rep = metrics.get("reported_top1")
    return Outcome(stderr=f"{args.dataset}/{args.arch}: test top1 {100 * metrics['top1']:.2f}%"
                   + (f" (the source reports {100 * rep:.2f}%)" if rep is not None else "") + f" -> {out}")


def fetch_teachers_of(args) -> Outcome:
    profile = profile_of(args)
    if not used_teachers(profile):
        return Outcome(stderr=f"{args.params}: the profile names no external teachers (key `teachers`)")
    lines = fetch_teachers(profile, download=args.download, params=profile_ref(args))
    return Outcome(stdout="\n".join(lines) + "\n", rc=0 if all(line.startswith("OK") for line in lines) else 1)


# --------------------------------------------------------------------------- tuning
def tune_select(args) -> Outcome:
    profile = profile_of(args, [args.method])
    check_in_profile(profile, args.dataset, args.teacher, args.student, args.method)
    path = write_selection(profile, args.dataset, args.teacher, args.student, args.method)
    rec = json.loads(path.read_text())
    return Outcome(stderr=f"{args.method}: trial {rec['trial']} of {rec['n_trials']} {rec['values']} "
                          f"(val {rec['score']}) -> {path}")


def tune_export(args) -> Outcome:
    profile = profile_of(args)
    out = args.out or layout.tuned_export(profile["results_dir"])
    kio.write_text(export(profile, args.params), out)
    return Outcome(stderr=f"selection of {args.params} -> {out}")


def _tune_method_plan(args) -> dict:
    """What ``tune-method`` runs: the board's tuned file, the one-method tuning profile
    (written beside the trials), the selections it makes; checked before any job."""
    board = profile_of(args)
    if not board.get("tuned"):
        raise KDBenchError(f"tune-method: {args.params} has no tuned: selection file to merge into (a profile "
                           f"with tuning: runs its own trials: snakemake --configfile {args.params})")
    tuned = resolve_params_path(board["tuned"])
    protocol = load_yaml(tuned).get("protocol") or {}
    source = args.tuning_profile or protocol.get("profile")
    if not source or not resolve_params_path(source).is_file():
        raise KDBenchError(f"tune-method: the tuning profile {source!r} of {tuned} is not there (--tuning-profile "
                           f"FILE names the one that made it)")
    restricted = Path(board["results_dir"]) / "tuning" / f"tune-method-{args.method}.yaml"
    kio.write_text(restricted_profile(resolve_params_path(source), args.method), restricted)
    profile = load_profile_with_overrides(restricted, args.overrides)
    if args.method not in tuned_methods(profile):
        raise KDBenchError(f"tune-method: {args.method!r} has nothing to tune (no search: axes in "
                           f"params/methods/{args.method}.yaml, or every axis fixed by method_params)")
    mine = {"trials": profile["tuning"]["trials"], "seeds": list(profile["tuning"]["seeds"])}
    if {k: protocol.get(k) for k in mine} != mine:
        raise KDBenchError(f"tune-method: {tuned} was selected with trials {protocol.get('trials')}, seeds "
                           f"{protocol.get('seeds')}; {source} now has {mine['trials']}, {mine['seeds']}: one "
                           f"file, one protocol (re-tune every method: make tune)")
    sels = [layout.selection(profile["results_dir"], d, p["teacher"], p["student"], args.method)
            for d in profile["datasets"] for p in profile["pairs"] if args.method in tuned_methods(profile, p)]
    return {"tuned": tuned, "profile": profile, "restricted": restricted, "selections": sels}


def tune_method(args) -> Outcome:
    """Tune one method on the board's cells (its trials and selections only, through the
    workflow) and merge its selections into the board's tuned file; every other entry of
    that file stays byte for byte. ``--dry-run``: the workflow's plan, nothing merged."""
    plan = _tune_method_plan(args)
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.is_file() else "snakemake", *map(str, plan["selections"]),
           "--cores", str(args.cores), "--configfile", str(plan["restricted"])]
    cmd += ["--config", *args.overrides] if args.overrides else []
    cmd += ["--dry-run"] if args.dry_run else []
    print(f"tune-method: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0 or args.dry_run:
        return Outcome(stderr="" if rc else f"dry run: would merge {len(plan['selections'])} selection(s) of "
                                              f"{args.method!r} into {plan['tuned']}", rc=rc)
    text = plan["tuned"].read_text()
    merged = merge_entries(text, selection_entries(plan["profile"], [args.method]), str(plan["tuned"]))
    kio.write_text(merged, plan["tuned"])
    return Outcome(stderr=f"{len(plan['selections'])} selection(s) of {args.method!r} merged into {plan['tuned']} "
                          f"(the other entries unchanged)")


# --------------------------------------------------------------------------- data, listing, validation
def prepare_data(args) -> Outcome:
    profile = profile_of(args)
    check_in_profile(profile, args.dataset, None, None, None)
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], profile["results_dir"], rebuild=True)
    return Outcome(stderr=f"{args.dataset}: {', '.join(f'{k}={len(v)}' for k, v in ds.splits.items())} "
                          f"fingerprint={ds.fingerprint} -> {layout.prepared_data(profile['results_dir'], args.dataset)}")


def list_names(args) -> Outcome:
    if args.what == "methods":
        names = list(iter_method_names())
    elif args.what == "archs":
        names = list_models() + ["timm:<name>  (any timm model of the resnet, mobilenetv3, efficientnet, convnext families)"]
    else:
        names = list_datasets()
    return Outcome(stdout="\n".join(names) + "\n")


def validate(args) -> Outcome:
    profile = profile_of(args)
    verify_teachers(profile, params=profile_ref(args))  # external teachers: files, hashes, keys
    n = len(expected_runs(profile))
    tuning = tuning_of(profile)
    extra = ""
    if tuning:
        trials = (len(profile["datasets"]) * sum(len(tuned_methods(profile, p)) for p in profile["pairs"])
                  * tuning["trials"] * len(tuning["seeds"]))
        extra = f"; tuning: {tuning['trials']} trials x {len(tuning['seeds'])} seeds per tuned method, {trials} trial runs"
    elif profile.get("tuned"):
        extra = f"; hyperparameters from {profile['tuned']}"
    return Outcome(stdout=f"{args.params}: valid ({n} student runs{extra})\n")


# --------------------------------------------------------------------------- evaluation and the board
def _trained_runs(args, profile, methods) -> list:
    """(method, run folder) of every method asked for; each must be trained and whole
    before any work starts (else one error with the command that trains / redoes it)."""
    runs = []
    for method in methods:
        sdir = layout.run_dir(profile["results_dir"], "student", args.dataset, args.student, args.seed,
                              teacher=args.teacher, method=method)
        train = dict(dataset=args.dataset, teacher=args.teacher, student=args.student, method=method, seed=args.seed)
        if not (sdir / layout.METRICS).is_file():
            raise KDBenchError(f"evaluate: {sdir / layout.METRICS} not found: train this run first: "
                               f"{command_line(args, 'distill', **train)}")
        for name in (layout.METRICS, layout.MODEL):  # truncated or corrupt: named, with the command that redoes it
            require_whole(sdir / name, command_line(args, "distill", **train, force=True))
        runs.append((method, sdir))
    return runs


def evaluate(args, progress=None) -> Outcome:
    """Evaluate one student run, or several methods of one dataset x pair x seed in one
    process (``--method a b c``: what the pipeline does, one job per cell and seed, so the
    interpreter, the data and the teacher are loaded once for all of them). ``progress``
    gets one line per run as it is done."""
    methods = list(dict.fromkeys(args.method))
    profile = profile_of(args, methods)
    if len(methods) > 1 and (args.out or args.figures):
        raise KDBenchError("evaluate: --out/--figures name one run's files: give one --method with them")
    for method in methods:
        check_in_profile(profile, args.dataset, args.teacher, args.student, method)
    results = Path(profile["results_dir"])
    runs = _trained_runs(args, profile, methods)
    bdir = layout.run_dir(results, "student", args.dataset, args.student, args.seed, teacher=args.teacher,
                          method="vanilla")
    try:
        tdd_hp = method_hparams("tdd", args.teacher, args.student, profile.get("method_params"))
    except KDBenchError:
        tdd_hp = None  # no tdd method installed: the evaluation's defaults
    set_threads(profile["threads"])
    ds = load_dataset(args.dataset, profile["datasets"][args.dataset], results)
    device = select_device(profile["device"])
    for method, sdir in runs:
        t_seed = json.loads((sdir / layout.METRICS).read_text()).get("teacher_seed")
        if t_seed is None:  # vanilla runs have no teacher: the pair's teacher as student_config picks it
            t_seed = teacher_seed_of(profile, args.seed)
        tdir = layout.run_dir(results, "teacher", args.dataset, args.teacher, t_seed)
        cell = dict(dataset=args.dataset, teacher=args.teacher, student=args.student, method=method)
        out = args.out or layout.eval_record(results, **cell, seed=args.seed)
        fig_dir = args.figures or layout.figures_dir(results, **cell)
        rec = evaluate_run(sdir, tdir, bdir, dataset=ds, evaluation=profile["evaluation"], out_path=out,
                           figure_path=Path(fig_dir) / f"s{args.seed}_unicam.png", device=device,
                           teacher_seed=t_seed, tdd_hparams=tdd_hp, reuse=not args.no_reuse)
        shown = " ".join(f"{k}={rec[k]:.4f}" for k in ("top1", "agreement", "expl_sim", "fss", "rs",
                                                       "decision_consistency") if isinstance(rec.get(k), float))
        (progress or (lambda line: None))(f"{method}: {shown} ({rec['eval_s']:.1f}s) -> {out}")
    return Outcome()


def leaderboard(args) -> Outcome:
    profile = profile_of(args)
    paths = build_board(profile, args.params, args.out, strict=args.strict, figures=not args.no_figures,
                        tracking=profile["tracking"]["enabled"] and not args.no_tracking,
                        published_dir=args.published, params_ref=profile_ref(args),
                        metric=args.metric)
    return Outcome(stderr=f"leaderboard -> {paths['board'].parent}/ "
                          f"({', '.join(p.name for p in paths.values() if p.exists())})")


#: the profile ``kdbench compare`` reads when no --params is given
DEFAULT_PARAMS = "params/default.yaml"


def boards_holding(method: str, params_dir: os.PathLike, overrides=()) -> list:
    """The profiles ``params_dir/*.yaml`` (sorted; one that does not load is skipped)
    that list ``method`` and whose results hold at least one evaluation record of it."""
    found = []
    for path in sorted(Path(params_dir).glob("*.yaml")):
        try:
            profile = load_profile_with_overrides(path, list(overrides))
        except KDBenchError:
            continue
        root = Path(profile.get("results_dir", "results"))
        if any(layout.eval_record(root, r["dataset"], r["teacher"], r["student"], method, r["seed"]).is_file()
               for r in expected_runs(profile) if r["method"] == method):
            found.append(path.as_posix())
    return found


def _compare_records(args) -> tuple:
    """The records ``compare`` reads and a note for stderr. Without --params: the default
    profile's, or, where its board does not hold the method, those of the one profile in
    params/ whose results do (named in the note); several such profiles are an error that
    names them."""
    if args.params is not None:
        return collect_records(profile_of(args)), ""
    args.params = DEFAULT_PARAMS
    records = collect_records(profile_of(args))
    if any(r.get("method") == args.method for r in records):
        return records, ""
    found = [p for p in boards_holding(args.method, Path(DEFAULT_PARAMS).parent, args.overrides)
             if p != DEFAULT_PARAMS]
    if len(found) > 1:
        raise KDBenchError(f"compare: method {args.method!r} is not on the board of {DEFAULT_PARAMS}; these "
                           f"profiles' results hold it: {', '.join(found)} (pass one with --params)")
    if not found:
        return records, ""  # report's check names --params and --runs
    args.params = found[0]
    return collect_records(profile_of(args)), (f"compare: {args.method!r} is not on the board of {DEFAULT_PARAMS}; "
                                               f"reading {found[0]} (the one profile in params/ whose results hold "
                                               f"it; --params chooses another)")


def compare(args) -> Outcome:
    note = ""
    if args.runs:
        import pandas as pd  # only `compare --runs` reads a CSV: pandas stays out of the other commands

        if not args.runs.is_file():
            raise KDBenchError(f"{args.runs} not found (it is the board's runs.csv: run the pipeline first)")
        runs = pd.read_csv(args.runs)
    else:
        records, note = _compare_records(args)
        runs = runs_frame(records)
    if args.format != "table":  # the table prints it; csv / json stay data
        note = "\n".join(t for t in (note, compare_warning(runs, args.method, args.vs or None)) if t)
    return Outcome(stderr=note, stdout=report(runs, args.method, args.metric, args.vs or None, args.format,
                                              args.alpha, source=str(args.runs) if args.runs else profile_ref(args)))


# --------------------------------------------------------------------------- tracking
def sync_tracking(args) -> Outcome:
    counts = sync_spools(args.results)
    return Outcome(stderr=f"MLflow: {counts['synced']} run(s) synced, {counts['already']} already, "
                          f"{counts['failed']} failed", rc=0 if counts["failed"] == 0 else 1)


def init_tracking(args) -> Outcome:
    uri = init_store(args.experiment, wait_s=args.wait)
    return Outcome(stderr=f"MLflow store ready: {uri} (experiment {args.experiment!r})")
