# The workflow's Python: the profile (validated), the values the rules share, the paths
# and the input functions. The rules/*.smk files next to this one hold only rules.
import re

from snakemake.settings.types import DeploymentMethod

from kdbench.errors import KDBenchError

# Jobs call `kdbench`: the one installed beside the Python running Snakemake (e.g.
# .venv/bin/), also when that environment is not activated (`.venv/bin/snakemake`). The
# shell puts that directory first on the job's own PATH, on whichever machine the job
# runs; with --use-conda (or a container) the environment's kdbench is used instead.
if not {DeploymentMethod.CONDA, DeploymentMethod.APPTAINER} & set(workflow.deployment_settings.deployment_method):
    shell.prefix(f'set -euo pipefail; PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; ')

_cli_files = [Path(p) for p in workflow.overwrite_configfiles]
if len(_cli_files) > 1:
    raise WorkflowError(f"kdbench: give one params profile (--configfile), not {', '.join(map(str, _cli_files))}")
if _cli_files:
    PARAMS = os.path.relpath(_cli_files[0]) if _cli_files[0].is_relative_to(Path.cwd()) else str(_cli_files[0])
else:
    PARAMS = DEFAULT_PARAMS


def _flatten(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _yaml_value(value):
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


class JobArg:
    """A command-line value that is not a provenance of the job's outputs: the profile
    file's name, the --config overrides, the MLflow mode. What they change in a run is in
    its config hash (each training rule's `config_hash` param); the name of the file it
    came from is not, so running the same profile from a copy re-runs nothing. Snakemake's
    params rerun trigger records only builtin values: it skips this type (see
    snakemake.persistence.Persistence._serialize_param)."""

    def __init__(self, value):
        self.value = str(value)

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


# --config KEY=VALUE overrides reach the jobs as `kdbench ... --set KEY=VALUE`
SET_ITEMS = [f"{k}={_yaml_value(v)}" for k, v in _flatten(dict(workflow.config_settings.config))]
SET = "".join(f" --set {shlex.quote(item)}" for item in SET_ITEMS)

try:
    from kdbench.board.records import expected_runs
    from kdbench.config import (SCHEMA_PATH, layout, load_yaml, pair_methods, teacher_config, teacher_seed_of,
                                teacher_threads)
    from kdbench.profile import load_profile_with_overrides
    from kdbench.tuning import candidates, rerun_key, trial_config, tuned_methods, tuning_of

    # exactly what every job reads (`kdbench --params PARAMS --set ...`), with kdbench's YAML
    # reader (1e-3 is a number there; Snakemake's reader makes it a string)
    P = load_profile_with_overrides(PARAMS, SET_ITEMS)
except KDBenchError as err:
    # one error naming the bad key/value and the valid choices; nothing is written
    msg = str(err).replace("(--set ", "(--config ").replace(" --set ", " --config ")  # Snakemake's spelling
    where = "" if PARAMS in msg or "command line" in msg else f" {PARAMS}"
    raise WorkflowError(f"invalid params{where}: {msg}") from None
# External teacher checkpoints (profile key `teachers`): every used file exists, has its
# pinned sha256 and fits its arch, before any job (cached by path/size/mtime).
try:
    from kdbench.teachers import rule_identity, used_teachers, verify_teachers

    verify_teachers(P, params=shlex.quote(PARAMS) + SET)
except KDBenchError as err:
    raise WorkflowError(f"{PARAMS}: {err}") from None
# Same schema, Snakemake's own validator (always passes once kdbench's has).
validate(load_yaml(PARAMS), str(SCHEMA_PATH))  # = workflow/schemas/params.schema.yaml

from kdbench.methods import get_method  # noqa: E402  (already imported by validation)

R = os.path.normpath(P["results_dir"] or ".")
DATASETS = list(P["datasets"])
PAIRS = [(p["teacher"], p["student"]) for p in P["pairs"]]
METHODS = list(P["methods"])
SEEDS = list(P["seeds"])
THREADS = int(P["threads"])
TEACHER_THREADS = teacher_threads(P)
# processes (GPUs) per training job: > 1 runs it under torchrun (data-parallel, see
# kdbench/engine/distributed.py); the rules' `nproc` / `gpu` resources default to it, and an
# executor profile may override them (set-resources, e.g. distill with nproc 4 and gpu 4)
NPROC = int(P["nproc_per_node"])
JOB_GPUS = 0 if P["device"] == "cpu" else NPROC
TRACKING = bool(P["tracking"]["enabled"])
EXPERIMENT = P["tracking"]["experiment"]
# jobs write their MLflow run record beside their outputs; the leaderboard rule (or, on an
# error, onerror) logs them all from one process: no job imports MLflow
TRACKING_MODE = "deferred" if TRACKING else "off"

# the same values as they go into command lines (as params of the rules, see JobArg)
PROFILE_ARG = JobArg(PARAMS)
SET_ARG = JobArg(SET)
TRACKING_ARG = JobArg(TRACKING_MODE)
EXPERIMENT_ARG = shlex.quote(EXPERIMENT)
RESULTS_ARG = shlex.quote(R)

# hyperparameter tuning inside this profile's DAG (tuning: {trials, seeds}); vanilla and any
# method without hyperparameters has no trials
TUNING = tuning_of(P)
TUNED = tuned_methods(P) if TUNING else []
TUNING_SEEDS = list(TUNING["seeds"]) if TUNING else []
TUNING_EXPORT = [str(layout.tuned_export(R))] if TUNING else []


# (dataset/arch) of the teachers imported from external checkpoints (rules/import_teachers.smk)
EXTERNAL_TEACHERS = sorted(f"{t.dataset}/{t.arch}" for t in used_teachers(P))
EXTERNAL_TEACHER_PATTERN = "|".join(re.escape(n) for n in EXTERNAL_TEACHERS) or "(?!)"


def r(path):
    """A path under the profile's results_dir."""
    return os.path.join(R, path)


def needs_teacher(method):
    return get_method(method).needs_teacher


def launcher(resources):
    """How a training job calls kdbench: plainly for one process, else as one
    data-parallel job of `nproc` processes under torchrun (--standalone: a free local
    port, so that several jobs on one machine never collide)."""
    n = int(resources.get("nproc", 1))
    return "kdbench" if n <= 1 else f"torchrun --standalone --nproc-per-node {n} -m kdbench.cli"


def check_prepared_data():
    """A results/data/<d>/data.pt whose content does not match its meta.json loses the
    meta.json, so that the data job rebuilds it (see the Snakefile)."""
    from kdbench.data.cache import check_prepared

    for dataset in P["datasets"]:
        path = layout.prepared_data(P["results_dir"], dataset)
        problem = check_prepared(path) if path.is_file() else None
        if problem:
            print(f"kdbench: {path} {problem}: the data job rebuilds it", file=sys.stderr)
            path.with_name(os.path.basename(layout.DATA_META)).unlink(missing_ok=True)


def check_finished_outputs():
    """Damaged finished outputs lose their run's completion marker (see the Snakefile)."""
    from kdbench.integrity import check_finished

    runs = [os.path.dirname(p) for p in board_students() + board_teachers()]
    check_finished([os.path.join(d, n) for d in runs for n in (layout.MODEL, layout.METRICS)] + board_evals())


def teacher_seed(seed):
    return teacher_seed_of(P, seed)


def teacher_model(dataset, arch, seed):
    return str(layout.teacher_model(R, dataset, arch, teacher_seed(seed)))


# --------------------------------------------------------------------------- distill / evaluate
def distill_teacher(w):
    return teacher_model(w.dataset, w.teacher, w.seed) if needs_teacher(w.method) else []


def distill_selection(w):
    """The tuning selection a run's hyperparameters come from (when this profile tunes)."""
    if w.method not in TUNED:
        return []
    return str(layout.selection(R, w.dataset, w.teacher, w.student, w.method))


def distill_key(w):
    return rerun_key(P, w.dataset, w.teacher, w.student, w.method, int(w.seed))


def student_dir(w, method=None):
    return layout.run_dir(R, "student", w.dataset, w.student, int(w.seed), teacher=w.teacher, method=method or w.method)


def student_file(name, method=None):
    return lambda w: str(student_dir(w, method) / name)


def cell_student_files(name):
    """``name`` of every student of one dataset x pair x seed (vanilla included: the base)."""
    return lambda w: [str(student_dir(w, m) / name)
                      for m in dict.fromkeys(["vanilla", *pair_methods(P, w.teacher, w.student)])]


def cell_eval_outputs(methods):
    """The evaluation records one evaluate job writes: every method of its cell and seed."""
    return [r(layout.pattern(layout.EVAL, method=m)) for m in methods]


def evaluate_groups():
    """The evaluate rules as (name, methods, teacher regex, student regex). One per set of
    pairs that run the same methods (a pair's exclude_methods), as long as that set's
    teachers x students match none of the other pairs (else one per pair). Without
    exclusions: the single `evaluate`."""
    groups = {}
    for t, s in PAIRS:
        groups.setdefault(tuple(pair_methods(P, t, s)), []).append((t, s))
    split = []
    for methods, pairs in groups.items():
        teachers, students = {t for t, _ in pairs}, {s for _, s in pairs}
        crossed = [p for p in PAIRS if p[0] in teachers and p[1] in students]
        split += [(methods, pairs)] if len(crossed) == len(pairs) else [(methods, [p]) for p in pairs]
    alternation = lambda names: "|".join(re.escape(n) for n in dict.fromkeys(names))
    return [("evaluate" if k == 0 else f"evaluate_{k + 1}", list(methods),
             alternation(t for t, _ in pairs), alternation(s for _, s in pairs))
            for k, (methods, pairs) in enumerate(split)]


# --------------------------------------------------------------------------- tuning
def trial_teacher(w):
    return distill_teacher(w)


def trial_key(w):
    return trial_config(P, w.dataset, w.teacher, w.student, w.method, int(w.trial), int(w.seed)).config_hash


def cell_trials(w):
    """Every trial x tuning seed of one dataset x pair x method."""
    n = len(candidates(P, w.teacher, w.student, w.method))
    return [str(layout.trial_dir(R, w.dataset, w.teacher, w.student, w.method, k, s) / layout.METRICS)
            for k in range(n) for s in TUNING_SEEDS]


def all_selections():
    return [str(layout.selection(R, d, t, s, m)) for d in DATASETS for t, s in PAIRS for m in TUNED
            if m in pair_methods(P, t, s)]


# --------------------------------------------------------------------------- leaderboard
def board_runs():
    """(dataset, teacher, student, method, seed) of every student run of the profile."""
    return [(x["dataset"], x["teacher"], x["student"], x["method"], x["seed"]) for x in expected_runs(P)]


BOARD = r(layout.BOARD)


def board_file(name):
    return os.path.join(BOARD, name)


def board_evals():
    return [r(layout.pattern(layout.EVAL, dataset=d, teacher=t, student=s, method=m, seed=seed)) for d, t, s, m, seed in board_runs()]


def board_students():
    return [str(layout.run_dir(R, "student", d, s, seed, teacher=t, method=m) / layout.METRICS)
            for d, t, s, m, seed in board_runs()]


def published_files():
    # files of the checkout, never in a remote default storage (local)
    return [local(f"params/published/{d}.yaml") for d in DATASETS if os.path.exists(f"params/published/{d}.yaml")]


def board_teachers():
    return sorted({str(layout.run_dir(R, "teacher", d, t, teacher_seed(seed)) / layout.METRICS)
                   for d, t, s, m, seed in board_runs()})
