"""The ``kdbench`` command: parse the command line, call one function of
:mod:`kdbench.commands` (every subcommand's work, callable from a test) and print what it
returns. Every pipeline rule calls it, so any job can be re-run by hand.

Parsing needs nothing but the standard library: ``kdbench --help`` and a usage error
answer at once; torch and the rest load only when a command runs (kdbench.commands).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from kdbench.errors import KDBenchError

EPILOG = """\
examples:
  kdbench list methods
  kdbench train-teacher --params params/smoke.yaml --dataset shapes --arch resnet20 --seed 0
  kdbench distill --params params/smoke.yaml --dataset shapes --teacher resnet20 \\
      --student resnet8 --method kd --seed 0 --set student_train.epochs=2
  kdbench leaderboard --params params/smoke.yaml
Outputs go to the profile's results_dir (default results/) unless --out is given.
"""


def _common(p: argparse.ArgumentParser, *, run: bool = True,
            params_help: str = "params profile (YAML); default: %(default)s") -> None:
    p.add_argument("--params", default="params/default.yaml", help=params_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, e.g. student_train.epochs=3 (repeatable)")
    if run:
        p.add_argument("--out", type=Path, help="output directory (default: the standard results path)")
        p.add_argument("--tracking", choices=["live", "deferred", "off"], default="live",
                       help="MLflow: log while training (live, default), write the run record to "
                            "mlflow_run.json for `kdbench sync-tracking` (deferred: what the pipeline "
                            "does), or not at all (off)")
        p.add_argument("--force", action="store_true", help="re-train even if finished outputs exist")


def _cell(p: argparse.ArgumentParser, help: str = "method name (kdbench list methods)", **method) -> None:
    """--dataset, --teacher, --student and --method: the run cell a command acts on."""
    for name in ("dataset", "teacher", "student"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--method", required=True, help=help, **method)


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


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, Snakemake stopping its jobs), raised in the main thread."""


def _on_sigterm(signum, frame):
    raise Interrupted()


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the usage text is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kdbench", description="kdbench: a reproducible knowledge-distillation benchmark.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_setup_commands, _add_teacher_commands, _add_student_commands, _add_board_commands,
                _add_tracking_commands):
        add(sub)
    return parser


def _add_setup_commands(sub) -> None:
    """The subcommands list, validate, prepare-data."""
    p = sub.add_parser("list", help="list registered methods, architectures or datasets")
    p.add_argument("what", choices=["methods", "archs", "datasets"])
    p.set_defaults(run="list_names")

    p = sub.add_parser("validate", help="check a params profile without running anything")
    _common(p, run=False)
    p.set_defaults(run="validate")

    p = sub.add_parser("prepare-data", help="build a dataset once and store its tensors under results/data/")
    _common(p, run=False)
    p.add_argument("--dataset", required=True)
    p.set_defaults(run="prepare_data")


def _add_teacher_commands(sub) -> None:
    """The subcommands train-teacher, import-teacher, fetch-teachers."""
    p = sub.add_parser("train-teacher", help="train a teacher (the vanilla recipe on the teacher arch)",
                       description="Train a teacher with the profile's teacher_train recipe. Resumes from its "
                                   "checkpoint if interrupted.")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True, help="architecture (kdbench list archs)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(run="train_teacher")

    p = sub.add_parser("import-teacher", help="use an external teacher checkpoint (the profile's `teachers`)",
                       description="Load the checkpoint the profile names for (DATASET, ARCH) under `teachers` "
                                   "(RepDistiller/mdistiller layout; torch.load weights_only), check its sha256 and "
                                   "keys, measure its test accuracy once and write the train-teacher outputs "
                                   "(model.pt, metrics.json with top1, reported_top1 and source).")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True, help="architecture (kdbench list archs)")
    p.add_argument("--seed", type=_seed, default=0, help="the teacher seed directory to write (s<seed>)")
    p.set_defaults(run="import_teacher_run")

    p = sub.add_parser("fetch-teachers", help="check (and with --download, fetch) a profile's external teachers",
                       description="For every external teacher the profile uses: say whether its file is where "
                                   "kdbench looks, and check its sha256 and keys. Only with --download (and "
                                   "internet) are missing files fetched from their url.")
    _common(p, run=False)
    p.add_argument("--download", action="store_true", help="download missing files from their url")
    p.set_defaults(run="fetch_teachers_of")


def _add_student_commands(sub) -> None:
    """The subcommands distill and the tuning protocol (tune-trial, tune-select, tune-export,
    tune-method)."""
    p = sub.add_parser("distill", help="train a student with a distillation method",
                       description="Distil TEACHER into STUDENT with METHOD (vanilla = the student alone) using "
                                   "the profile's student_train recipe and params/methods/METHOD.yaml. The teacher "
                                   "must have been trained (train-teacher). Resumes from its checkpoint.")
    _common(p)
    _cell(p)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--teacher-model", type=Path, help="teacher model.pt (default: the standard results path)")
    p.set_defaults(run="distill")

    p = sub.add_parser("tune-trial", help="one hyperparameter-tuning trial, scored on the validation split",
                       description="Train trial TRIAL of the profile's tuning (tuning: {trials, seeds}) for one "
                                   "dataset, pair and method: trial 0 = the paper values, then the method's search "
                                   "space (params/methods/METHOD.yaml search:). The test split is never read. "
                                   "Writes results/tuning/D/T__S/M/tK/sN/metrics.json.")
    _common(p)
    _cell(p)
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--seed", type=_seed, required=True, help="one of the profile's tuning.seeds")
    p.set_defaults(run="tune_trial")

    p = sub.add_parser("tune-select", help="pick the trial with the best validation accuracy",
                       description="Read every trial of one dataset, pair and method and write selection.json: "
                                   "every trial's values and validation accuracy, and the winner (highest mean over "
                                   "the tuning seeds; ties: the lowest trial number).")
    _common(p, run=False)
    _cell(p)
    p.set_defaults(run="tune_select")

    p = sub.add_parser("tune-export", help="all of a profile's selections as one file (params/tuned/*.yaml)",
                       description="Collect the selections of a tuning profile into one YAML file with its "
                                   "provenance (trials, seeds, every trial's validation accuracy). A profile uses it "
                                   "with tuned: FILE.")
    _common(p, run=False)
    p.add_argument("--out", type=Path, help="output file (default: RESULTS_DIR/tuning/tuned.yaml)")
    p.set_defaults(run="tune_export")

    p = sub.add_parser("tune-method", help="tune one method on a board's cells and merge it into the tuned file",
                       description="Run ONE method's tuning trials and selections on the cells of the board's "
                                   "profile (the workflow's tune rules, with the tuning profile that made the board's "
                                   "tuned: file restricted to that method), then merge its selections into that file: "
                                   "its entries replaced or added, every other entry byte for byte as it was "
                                   "(docs/hyperparameters.md).",
                       epilog="example: kdbench tune-method --params params/default.yaml --method mine --dry-run")
    _common(p, run=False)
    p.add_argument("--method", required=True, help="the method to tune (in the profile, with search: axes)")
    p.add_argument("--tuning-profile", help="the tuning profile (default: the one the tuned file names)")
    p.add_argument("--cores", default="all", help="snakemake --cores; default: %(default)s")
    p.add_argument("--dry-run", action="store_true", help="show the workflow's jobs; run and merge nothing")
    p.set_defaults(run="tune_method")


def _add_board_commands(sub) -> None:
    """The subcommands evaluate, leaderboard, compare."""
    p = sub.add_parser("evaluate", help="interpretability + accuracy evaluation of one student run",
                       description="Evaluate a trained student run (and its teacher and vanilla base): accuracy, "
                                   "agreement, Grad-CAM similarity and EPG, FSS/RS, UniCAM, decision consistency, "
                                   "FLOPs. Writes results/evals/D/T__S/M/sN.json and a UniCAM/Grad-CAM grid PNG.")
    _common(p, run=False)
    _cell(p, nargs="+", help="method name(s) (kdbench list methods); several are evaluated one after another in "
                             "this process (what the pipeline does: one job per dataset x pair x seed)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, help="output JSON file (default: results/evals/D/T__S/M/sN.json)")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="directory for the sN_unicam.png grid (default: results/figures/D/T__S/M/)")
    p.add_argument("--no-reuse", action="store_true",
                   help="evaluate every run again, even one whose kept record (eval_record.json beside the "
                        "student) was computed from exactly the same inputs")
    p.set_defaults(run="evaluate")

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
    p.set_defaults(run="leaderboard")

    p = sub.add_parser("compare", help="one method against every other on the same cells (paired t-test, Holm)",
                       description="Compare METHOD with every other method on the same dataset and teacher/student "
                                   "pair: the paired mean difference over seeds with its 95 % CI and paired t-test "
                                   "p-value (Welch's where the seeds do not pair), Holm-corrected within the board's "
                                   "family (every pairwise comparison of a cell's methods); then METHOD's overall "
                                   "rank with its interval and its wins / ties / losses.",
                       epilog="example: kdbench compare e2kd --params params/default.yaml --metric top1_ood")
    _common(p, run=False, params_help="params profile (YAML); default: params/default.yaml or, where its board "
                                      "does not hold METHOD, the one profile in params/ whose results do")
    p.add_argument("method", help="the method to compare (must be on the board)")
    p.add_argument("--metric", default="top1", help="per-run metric (runs.csv column); default: %(default)s")
    p.add_argument("--vs", nargs="+", metavar="METHOD", help="only these other methods")
    p.add_argument("--runs", type=Path, help="a runs.csv to read instead of the profile's evaluations")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--alpha", type=float, default=0.05, help="level for the Holm-corrected p marked with *; default: %(default)s")
    p.set_defaults(run="compare", params=None)  # None: commands.compare looks for the board


def _add_tracking_commands(sub) -> None:
    """The subcommands sync-tracking, init-tracking."""
    p = sub.add_parser("sync-tracking", help="log deferred run records (mlflow_run.json) to MLflow")
    p.add_argument("--results", type=Path, default=Path("results"), help="where to look (default: %(default)s)")
    p.set_defaults(run="sync_tracking")

    p = sub.add_parser("init-tracking", help="create the MLflow store once (the pipeline does this first)")
    p.add_argument("--experiment", default="kdbench")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait this long for a store that another process holds; default: %(default)s")
    p.set_defaults(run="init_tracking")


def _print(outcome) -> int:
    if outcome.stdout:
        sys.stdout.write(outcome.stdout)
    if outcome.stderr:
        print(outcome.stderr, file=sys.stderr)
    return int(outcome.rc)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # the library (torch, the registries) loads only now that a command runs: --help and usage
    # errors stay instant
    from kdbench import commands

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.run == "evaluate":  # one line per run as it is done
            return _print(commands.evaluate(args, progress=lambda line: print(line, file=sys.stderr)))
        return _print(getattr(commands, args.run)(args))
    except KDBenchError as err:
        print(f"kdbench: error: {str(err).strip()}{commands.fix_hint(args, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # quiet: no traceback. A training job resumes from its last epoch checkpoint.
        what = "terminated" if isinstance(err, Interrupted) else "interrupted"
        print(f"kdbench: {what}; run the same command again to continue (a training job resumes from "
              f"its last epoch's checkpoint)", file=sys.stderr, flush=True)
        return 143 if isinstance(err, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
