"""Faults and bad input (issue 13): each test reproduces the fault for real (a crafted
pickle, a truncated file, a SIGTERM, a teacher of another profile) and checks that it is
refused with one line naming the value and the fix, or recovered from."""
from __future__ import annotations

import copy
import csv
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdbench import cli
from kdbench.config import ParamsError, load_yaml, teacher_config
from kdbench.hparams import method_hparams, student_config
from kdbench.profile import load_profile, load_profile_with_overrides, validate_profile
from kdbench.engine import trainer
from kdbench.errors import KDBenchError
from kdbench.methods.base import PairError
from tests import fakedata
from tests.tiny import TINY_PROFILE, tiny_profile, write_profile

ROOT = Path(__file__).resolve().parents[1]
KDBENCH = [sys.executable, "-m", "kdbench.cli"]


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDBENCH_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
               PYTHONWARNINGS="ignore")
    return env


def _one_line_error(capsys, argv) -> str:
    code = None
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- CIFAR pickles
class _RunsCode:
    """Unpickling this calls os.system (what a crafted data_batch_1 did)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_cifar_batch_runs_no_code(tmp_path):
    from kdbench.data import build_dataset

    folder = Path(fakedata.write_cifar10(str(tmp_path), per_batch=20, n_test=30))
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0] * 20}, fh, protocol=2)
    with pytest.raises(KDBenchError) as err:
        build_dataset("cifar10", data_root=str(tmp_path), val_size=10)
    assert not marker.exists(), "the crafted pickle ran code"
    msg = str(err.value)
    assert str(folder / "data_batch_1") in msg and "posix.system" in msg and "\n" not in msg


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape", "not_a_dict"])
def test_damaged_cifar_batch_names_file_and_format(tmp_path, damage):
    from kdbench.data import build_dataset

    folder = Path(fakedata.write_cifar10(str(tmp_path), per_batch=20, n_test=30))
    path = folder / "data_batch_3"
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "wrong_shape":
        fakedata.dump_py2({b"data": np.zeros((20, 1000), np.uint8), b"labels": [0] * 20}, str(path))
    else:
        fakedata.dump_py2([1, 2, 3], str(path))
    with pytest.raises(KDBenchError, match=r"data_batch_3.*expected .*uint8, N×3072"):
        build_dataset("cifar10", data_root=str(tmp_path), val_size=10)


# ----------------------------------------------------------------------------- YAML and --set
def test_scientific_notation_is_a_number(tmp_path):
    prof = tiny_profile(tmp_path)
    text = yaml.safe_dump(prof).replace("lr: 0.05", "lr: 1e-3", 1)
    assert "lr: 1e-3" in text
    (tmp_path / "p.yaml").write_text(text)
    full = load_profile(tmp_path / "p.yaml")
    assert 1e-3 in (full["teacher_train"]["lr"], full["student_train"]["lr"])
    over = load_profile_with_overrides(tmp_path / "p.yaml", ["student_train.weight_decay=5E-4"])
    assert over["student_train"]["weight_decay"] == 5e-4


def test_python_tag_is_one_line_error(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ParamsError, match=r"evil.yaml, line 1: the tag '!!python/object/apply:os.system' is not"):
        load_yaml(path)
    err = _one_line_error(capsys, ["validate", "--params", str(path)])
    assert "remove the tag" in err and not marker.exists()


def test_malformed_set_blames_the_command_line(tmp_path, capsys):
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    err = _one_line_error(capsys, ["validate", "--params", str(params), "--set", "student_train.epochs=[1,"])
    assert "command line --set 'student_train.epochs=[1,'" in err and "not valid YAML" in err
    err = _one_line_error(capsys, ["validate", "--params", str(params), "--set", "student_train.epochs=two"])
    assert "the command line (--set student_train.epochs=two)" in err and str(params) not in err
    # an error of the file itself is still the file's
    bad = write_profile(tmp_path, tiny_profile(tmp_path, threads=0), "bad.yaml")
    err = _one_line_error(capsys, ["validate", "--params", str(bad), "--set", "student_train.epochs=2"])
    assert str(bad) in err and "threads" in err


def test_negative_seed_is_refused(tmp_path, capsys):
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    err = _one_line_error(capsys, ["train-teacher", "--params", str(params), "--dataset", "shapes",
                                   "--arch", "resnet14", "--seed", "-1"])
    assert "--seed" in err and "-1 is negative" in err and ">= 0" in err


# ----------------------------------------------------------------------------- method hparams
def _with(method_params=None, **changes):
    prof = copy.deepcopy(TINY_PROFILE)
    prof.update(changes)
    if method_params is not None:
        prof["method_params"] = method_params
    return prof


@pytest.mark.parametrize("value,pattern", [
    ("hot", r"method 'kd': hyperparameter temperature = 'hot' is invalid .*expected type number, exclusiveMinimum 0"),
    (0, r"method 'kd': hyperparameter temperature = 0 is invalid .*exclusiveMinimum 0"),
    (-1.0, r"temperature = -1.0 is invalid"),
])
def test_bad_hyperparameter_types_and_ranges(value, pattern):
    with pytest.raises(ParamsError, match=pattern):
        validate_profile(_with({"kd": {"temperature": value}}))


def test_every_default_has_a_type():
    """Contract 1: every hyperparameter in defaults has a types entry, and the defaults pass."""
    ten = ["vanilla", "kd", "fitnet", "at", "dkd", "tdd", "cid", "fcfd", "e2kd", "e2kd_frozen"]
    for path in [ROOT / "params" / "methods" / f"{m}.yaml" for m in ten]:
        spec = load_yaml(path)
        assert "types" in spec and set(spec["types"]) == set(spec["defaults"]), path.name
        keys = list(spec)
        assert keys.index("types") == keys.index("defaults") + 1, f"{path.name}: types: right after defaults:"
        method_hparams(path.stem, "resnet56", "resnet20", params_dir=path.parent)


def test_misspelt_pair_override_is_an_error(tmp_path):
    spec = load_yaml(ROOT / "params" / "methods" / "kd.yaml")
    spec["pairs"] = {"resnet14->resnt8": {"temperature": 2.0}}
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ParamsError, match=r"'resnet14->resnt8' names an unknown arch 'resnt8' "
                                          r"\(did you mean 'resnet14->resnet8'\?\)"):
        method_hparams("kd", "resnet14", "resnet8", params_dir=tmp_path)
    spec["pairs"] = {"resnet56->resnet20": {"temperature": 2.0}}      # valid, unused by this profile: fine
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(spec))
    assert method_hparams("kd", "resnet14", "resnet8", params_dir=tmp_path)["temperature"] == 4.0


# ----------------------------------------------------------------------------- pairs and shots
def test_method_pair_check_runs_at_validation():
    prof = _with(pairs=[{"teacher": "mobilenetv2", "student": "resnet20"}], methods=["vanilla", "kd", "fitnet"])
    with pytest.raises(PairError, match=r"method 'fitnet' cannot run on pair mobilenetv2->resnet20: no hint "
                                        r"regressor: cannot bridge a 32×16×16 feature to 48×4×4"):
        validate_profile(prof)
    validate_profile(_with(methods=["vanilla", "kd", "fitnet", "at", "cid", "tdd", "e2kd"]))


def test_paper_profile_validation_is_light():
    """Every pair × method of params/cifar100.yaml is checked on meta-device models, without
    importing torch._dynamo (seconds on one core)."""
    code = ("import sys, time; t = time.time(); from kdbench.profile import load_profile; "
            "load_profile('params/cifar100.yaml'); print(time.time() - t, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    seconds, dynamo = out.stdout.split()
    assert dynamo == "False"
    print(f"\ncifar100.yaml validation: {float(seconds):.1f} s", file=sys.stderr)


def test_student_shots_larger_than_a_class():
    prof = _with(student_train={**TINY_PROFILE["student_train"], "student_shots": 1000})
    with pytest.raises(ParamsError, match=r"student_shots = 1000 .*dataset 'shapes' has 32 training images.*"
                                          r"use at most 32"):
        validate_profile(prof)
    validate_profile(_with(student_train={**TINY_PROFILE["student_train"], "student_shots": 32}))


def test_threads_are_part_of_the_config_hash():
    one = validate_profile(_with(threads=1))
    two = validate_profile(_with(threads=2))
    assert teacher_config(one, "shapes", "resnet14", 0).config_hash != teacher_config(two, "shapes", "resnet14", 0).config_hash
    assert teacher_config(one, "shapes", "resnet14", 0).config_hash == teacher_config(
        validate_profile(_with(threads=1, device="cpu")), "shapes", "resnet14", 0).config_hash


# ----------------------------------------------------------------------------- teachers, data, resume
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    raw = tiny_profile(tmp)
    params = write_profile(tmp, raw)
    assert cli.main(["train-teacher", "--params", str(params), "--dataset", "shapes", "--arch", "resnet14",
                     "--tracking", "off"]) == 0
    return tmp, raw, params


def test_teacher_of_another_profile_is_refused(trained, tmp_path, capsys):
    tmp, raw, params = trained
    capsys.readouterr()
    other = dict(raw, teacher_train={**raw["teacher_train"], "epochs": 1})
    other_params = write_profile(tmp_path, other, "other.yaml")
    err = _one_line_error(capsys, ["distill", "--params", str(other_params), "--dataset", "shapes", "--teacher",
                                   "resnet14", "--student", "resnet8", "--method", "kd", "--tracking", "off",
                                   "--set", "student_train.epochs=1"])
    assert "was trained with another config" in err
    assert (f"train this profile's teacher: kdbench train-teacher --params {other_params} --dataset shapes "
            f"--arch resnet14 --seed 0 --set student_train.epochs=1") in err


def test_train_teacher_is_not_finished_without_its_model(trained, capsys):
    tmp, raw, params = trained
    model = Path(raw["results_dir"]) / "teachers/shapes/resnet14/s0/model.pt"
    argv = ["train-teacher", "--params", str(params), "--dataset", "shapes", "--arch", "resnet14", "--tracking", "off"]
    capsys.readouterr()
    assert cli.main(argv) == 0 and "already finished" in capsys.readouterr().err
    model.unlink()
    assert cli.main(argv) == 0 and "already finished" not in capsys.readouterr().err
    assert model.is_file()


def test_unreadable_or_foreign_data_is_refused_and_rebuilt(trained, capsys):
    from kdbench.data.cache import DataCacheError, check_prepared, load_dataset, prepared_path

    tmp, raw, params = trained
    path = prepared_path(raw["results_dir"], "shapes")
    opts = raw["datasets"]["shapes"]
    assert check_prepared(path) is None
    whole = path.read_bytes()
    os.truncate(path, 10000)
    assert "has 10000 bytes" in check_prepared(path)
    with pytest.raises(DataCacheError, match=r"data.pt is unreadable \(truncated or corrupt"):
        load_dataset("shapes", opts, raw["results_dir"])
    with pytest.raises(DataCacheError, match=r"built with other dataset options \(n_train=256 in the file vs 320"):
        path.write_bytes(whole)
        load_dataset("shapes", {**opts, "n_train": 320}, raw["results_dir"])
    os.truncate(path, 10000)
    capsys.readouterr()
    assert cli.main(["prepare-data", "--params", str(params), "--dataset", "shapes"]) == 0
    assert "rebuilding it" in capsys.readouterr().err and check_prepared(path) is None
    assert path.read_bytes() == whole                                    # the same data, rebuilt


def test_resumed_history_and_throughput(trained, tmp_path):
    tmp, raw, params = trained
    prof = validate_profile(copy.deepcopy(raw))
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    results = Path(raw["results_dir"])
    assert trainer.run(cfg, tmp_path, results_dir=results, max_epochs=1) == {"interrupted_after_epoch": 1}
    metrics = trainer.run(cfg, tmp_path, results_dir=results)
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert metrics["train_img_s"] is not None and metrics["train_img_s"] > 0


# ----------------------------------------------------------------------------- SIGTERM and MLflow
def _runs(db: Path):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT name, status FROM runs").fetchall()
    finally:
        con.close()


def test_sigterm_ends_live_run_killed_and_rerun_reuses_it(tmp_path):
    raw = tiny_profile(tmp_path, teacher_train={"epochs": 40}, tracking={"enabled": True, "experiment": "t"})
    params = write_profile(tmp_path, raw)
    args = KDBENCH + ["train-teacher", "--params", str(params), "--dataset", "shapes", "--arch", "resnet8",
                      "--tracking", "live"]
    env = _env(tmp_path)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = Path(raw["results_dir"]) / "teachers/shapes/resnet8/s0/checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "kdbench: terminated; run the same command again" in err
    assert _runs(tmp_path / "mlflow.db") == [("shapes/resnet8/vanilla/s0", "KILLED")]

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming after epoch" in done.stderr
    # the same job and config hash: the same MLflow run, now finished (not a second one)
    assert _runs(tmp_path / "mlflow.db") == [("shapes/resnet8/vanilla/s0", "FINISHED")]


def test_resynced_records_update_one_run(tmp_path):
    from kdbench.tracking import SPOOL_NAME, Tracker, sync_spools

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "results" / "job" / SPOOL_NAME
    for attempt, status in enumerate(["KILLED", "FINISHED", "FINISHED"]):
        t = Tracker(experiment="resync", spool=spool)
        t.start("shapes/resnet8/kd/s0", {"config_hash": "abc123", "attempt": attempt})
        t.log_metrics({"loss": 1.0}, step=1)
        if status == "FINISHED":
            t.log_metrics({"loss": 0.5}, step=2)
        t.finish(status)
        assert sync_spools(tmp_path / "results", uri)["synced"] == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("resync").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]


# ----------------------------------------------------------------------------- issue 21: inputs
# Each bad input below passed `kdbench validate` and failed later (or did damage): now it
# is one error before any work, and nothing is written.
@pytest.mark.parametrize("key,value", [
    ("student_train.lr", ".nan"), ("student_train.lr", ".inf"), ("teacher_train.momentum", ".nan"),
    ("method_params.kd.temperature", ".nan"), ("student_train.weight_decay", "-.inf"),
])
def test_non_finite_numbers_are_refused_at_validation(tmp_path, capsys, key, value):
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    err = _one_line_error(capsys, ["validate", "--params", str(params), "--set", f"{key}={value}"])
    assert f"bad value at {key}" in err and "not a finite number" in err
    # a method's own params file with a NaN is refused too (naming the file)
    methods = tmp_path / "params" / "methods"
    methods.mkdir(parents=True, exist_ok=True)
    (methods / "kd.yaml").write_text("defaults: {temperature: .nan, ce_weight: 0.1, kd_weight: 0.9}\n")
    with pytest.raises(ParamsError, match=r"kd.yaml: bad value at hyperparameters of kd.temperature: nan is not"):
        method_hparams("kd", "resnet14", "resnet8", params_dir=methods)


@pytest.mark.parametrize("option,value,pattern", [
    ("n_train", -5, r"option n_train = -5 is invalid \(-5 is less than the minimum of 1\)"),
    ("image_size", 0, r"option image_size = 0 is invalid \(0 is less than the minimum of 12\)"),
    ("n_train", 1e10, r"option n_train = 10000000000.0 is invalid \(10000000000.0 is greater than the maximum of 100000"),
    ("n_train", 10**10, r"option n_train = 10000000000 is invalid .*maximum of 100000"),
    ("bias", "high", r"option bias = 'high' is invalid"),
    ("seed", 2**40, r"option seed = 1099511627776 is invalid"),
])
def test_dataset_option_types_and_ranges_are_checked(tmp_path, capsys, option, value, pattern):
    params = write_profile(tmp_path, tiny_profile(tmp_path, datasets={"shapes": {
        **TINY_PROFILE["datasets"]["shapes"], option: value}}))
    err = _one_line_error(capsys, ["validate", "--params", str(params)])
    assert re.search(pattern, err), err
    assert not (tmp_path / "results").exists()


def test_huge_seed_is_refused_and_writes_nothing(tmp_path, capsys):
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    huge = "99999999999999999999999"
    err = _one_line_error(capsys, ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                                   "--student", "resnet8", "--method", "kd", "--seed", huge])
    assert f"{huge} is too large; give a seed from 0 to 4294967295" in err
    for key in ("seeds", "teacher_seed"):
        bad = write_profile(tmp_path, tiny_profile(tmp_path, **{key: [2**32] if key == "seeds" else 2**32}), "b.yaml")
        err = _one_line_error(capsys, ["validate", "--params", str(bad)])
        assert key in err and "4294967296 is greater than the maximum of 4294967295" in err
    assert not (tmp_path / "results").exists()


def test_duplicate_yaml_keys_name_the_key_and_both_lines(tmp_path, capsys):
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    text = params.read_text() + "seeds:\n- 5\n"
    params.write_text(text)
    first = next(k for k, line in enumerate(text.splitlines()) if line.startswith("seeds:")) + 1
    err = _one_line_error(capsys, ["validate", "--params", str(params)])
    assert f"the key 'seeds' appears twice (lines {first} and {len(text.splitlines()) - 1})" in err
    assert str(params) in err
    # YAML's merge key (params/cifar100.yaml's `<<: *recipe`) still overrides by design
    (tmp_path / "m.yaml").write_text("a: &r {x: 1, y: 2}\nb:\n  <<: *r\n  y: 3\n")
    assert load_yaml(tmp_path / "m.yaml")["b"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("results_dir,what", [("/", "the filesystem root"), (".", "the repository itself"),
                                              ("..", "a folder above the repository")])
def test_results_dir_at_root_or_repository_is_refused(capsys, monkeypatch, results_dir, what):
    monkeypatch.chdir(ROOT)
    prof = dict(copy.deepcopy(TINY_PROFILE), results_dir=results_dir)
    with pytest.raises(ParamsError, match=re.escape(f"results_dir {results_dir!r} is {what}")):
        validate_profile(prof)


def _bombs() -> dict:
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    return {
        "a 5000-digit integer": ("seeds: [" + "9" * 5000 + "]\n", r"line 1: an integer of 5000 digits \(at most 30\)"),
        "100k nested brackets": ("description: " + "[" * 100_000 + "]" * 100_000 + "\n",
                                 r"line 1: nested more than 64 levels deep"),
        "billion laughs in description": (laughs + "description: *i\n", r"line \d+: more than 100000 values once"),
        "billion laughs in a dataset option": (
            laughs + "datasets:\n  shapes: {image_size: 16, n_train: *i}\n", r"more than 100000 values once"),
    }


@pytest.mark.parametrize("name", list(_bombs()))
def test_yaml_bombs_are_one_error_in_well_under_a_second(tmp_path, capsys, name):
    text, pattern = _bombs()[name]
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    err = _one_line_error(capsys, ["validate", "--params", str(path)])
    assert time.perf_counter() - start < 0.5, "the reader took too long"
    assert re.search(pattern, err) and str(path) in err, err


def test_init_tracking_waits_for_a_locked_store_then_one_line(tmp_path, capsys, monkeypatch):
    """Issue 21, item 13: a store another process holds (a real SQLite exclusive lock) is
    waited for; released in time, the wait ends at once; held on, one line after the wait
    (not sqlalchemy's traceback)."""
    import threading

    from kdbench.tracking import wait_for_sqlite

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table experiments (name text)").connection.commit()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    start = time.monotonic()
    err = _one_line_error(capsys, ["init-tracking", "--experiment", "second", "--wait", "1"])
    assert 1 <= time.monotonic() - start < 3
    assert f"MLflow store {db} is locked by another process" in err and "after waiting 1 s" in err
    threading.Timer(0.5, lambda: holder.execute("ROLLBACK")).start()
    start = time.monotonic()
    wait_for_sqlite(f"sqlite:///{db}", 20)
    assert 0.4 < time.monotonic() - start < 5
    holder.close()


# ----------------------------------------------------------------------------- issue 21: runs by hand
def test_hand_run_of_another_config_never_replaces_a_finished_run(trained, capsys):
    """Item 4: the README's by-hand example with another recipe retrained the profile's
    finished run in place; now it is refused (naming --force and --out), the run untouched."""
    tmp, raw, params = trained
    model = Path(raw["results_dir"]) / "teachers/shapes/resnet14/s0/model.pt"
    before = model.read_bytes()
    capsys.readouterr()
    err = _one_line_error(capsys, ["train-teacher", "--params", str(params), "--dataset", "shapes", "--arch",
                                   "resnet14", "--tracking", "off", "--set", "teacher_train.epochs=3"])
    assert "holds a finished run of another config" in err and "--out DIR" in err and "--force" in err
    assert model.read_bytes() == before


def test_seed_outside_the_profile_is_refused_without_out(trained, capsys):
    """Item 5: `distill --seed 7` with a profile of seed 0 wrote into the profile's tree."""
    tmp, raw, params = trained
    capsys.readouterr()
    err = _one_line_error(capsys, ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                                   "--student", "resnet8", "--method", "kd", "--seed", "7", "--tracking", "off"])
    assert "seed 7 is not one of this profile's" in err and "seeds [0]" in err and "--out DIR" in err
    err = _one_line_error(capsys, ["train-teacher", "--params", str(params), "--dataset", "shapes", "--arch",
                                   "resnet14", "--seed", "3", "--tracking", "off"])
    assert "teacher seed 3 is not one of this profile's" in err
    assert not list(Path(raw["results_dir"]).rglob("s7")) and not list(Path(raw["results_dir"]).rglob("s3"))


def test_second_job_on_a_live_jobs_directory_is_refused(tmp_path, capsys):
    """Item 6: a job holds its output directory for its life (a real child process holds
    the flock); another job for it is refused, and the lock goes with the process."""
    from kdbench.io import JobLock, job_lock_holder, live_jobs

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kdbench.io import JobLock\n"
                               f"with JobLock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert job_lock_holder(out) == str(holder.pid)
        snakemake_lock = tmp_path / "0.output.lock"      # what Snakemake's lock file lists: one output a line
        snakemake_lock.write_text(f"{out}/model.pt\n{out}/metrics.json\n{tmp_path}/other/metrics.json\n")
        assert live_jobs([snakemake_lock]) == [(str(out), str(holder.pid))]
        with pytest.raises(KDBenchError, match=rf"another job \(pid {holder.pid}\) is writing {out}"):
            with JobLock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert job_lock_holder(out) is None
    with JobLock(out):
        assert job_lock_holder(out) == str(os.getpid())


def test_damaged_finished_outputs_are_found_and_only_their_marker_removed(tmp_path, monkeypatch):
    """Item 3: sealed outputs (size + SHA-256 where written); a truncated model.pt, metrics.json
    or evaluation record loses only its run's completion marker; untouched files are not
    read again (the stat is the cache)."""
    from kdbench import integrity
    from kdbench.io import save_torch, write_json

    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for d in runs.values():
        save_torch({"w": list(range(1000))}, d / "model.pt")
        write_json({"top1": 0.5, "config_hash": "x"}, d / "metrics.json")
        for f in ("model.pt", "metrics.json"):
            integrity.seal(d / f)
    record = tmp_path / "evals" / "s1.json"
    write_json({"top1": 0.5}, record)
    integrity.seal(record)
    files = [d / f for d in runs.values() for f in ("model.pt", "metrics.json")] + [record]
    hashed = []
    monkeypatch.setattr(integrity, "_sha256", lambda p: hashed.append(p) or "0")
    assert integrity.check_finished(files) == [] and hashed == []   # untouched: stat only
    monkeypatch.undo()
    os.truncate(runs["a"] / "model.pt", 100)
    os.truncate(runs["b"] / "metrics.json", 10)
    os.truncate(record, 5)
    damaged = integrity.check_finished(files)
    assert [p for p, _ in damaged] == [runs["a"] / "model.pt", runs["b"] / "metrics.json", record]
    assert all("bytes" in problem and "truncated" in problem for _, problem in damaged)
    assert not (runs["a"] / "metrics.json").exists() and (runs["a"] / "model.pt").exists()
    assert not (runs["b"] / "metrics.json").exists() and not record.exists()
    assert (runs["c"] / "model.pt").exists() and (runs["c"] / "metrics.json").exists()
    # same size, content changed: found by the hash; files written before seals: by format
    (runs["c"] / "metrics.json").write_text((runs["c"] / "metrics.json").read_text().replace("0.5", "0.7"))
    assert "SHA-256" in integrity.check_file(runs["c"] / "metrics.json")
    old = tmp_path / "old" / "s0.json"
    old.parent.mkdir()
    old.write_text('{"top1": 0.')
    assert "not readable JSON" in integrity.check_file(old)


def test_evaluate_by_hand_names_a_damaged_run_and_its_command(trained, tmp_path, capsys):
    """Item 3: a truncated student metrics.json gave a raw JSONDecodeError in evaluate."""
    from kdbench.integrity import seal

    tmp, raw, params = trained
    sdir = Path(raw["results_dir"]) / "students/shapes/resnet14__resnet8/kd/s0"
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / "metrics.json").write_text('{"config_hash": "abc", "teacher_seed": 0}\n')
    seal(sdir / "metrics.json")
    os.truncate(sdir / "metrics.json", 8)
    try:
        capsys.readouterr()
        err = _one_line_error(capsys, ["evaluate", "--params", str(params), "--dataset", "shapes", "--teacher",
                                       "resnet14", "--student", "resnet8", "--method", "kd", "--seed", "0"])
    finally:
        import shutil

        shutil.rmtree(sdir.parent)
    assert f"{sdir / 'metrics.json'} has 8 bytes" in err
    assert (f"make it again: kdbench distill --params {params} --dataset shapes --teacher resnet14 --student "
            f"resnet8 --method kd --seed 0 --force") in err
