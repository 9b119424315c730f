"""External teacher checkpoints (kdbench/teachers.py, kdbench/models/reference.py).

The reference layouts come from tests/refnets.py: RepDistiller's module structure written
from its code, independently of the zoo, so a checkpoint built from it carries exactly the
reference's key names and shapes."""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.config import load_yaml
from kdbench.profile import validate_profile
from kdbench.models import create_model
from kdbench.models.reference import CheckpointMismatchError, load_reference_state, to_reference_state
from kdbench.teachers import (ExternalTeacherError, external_teacher, file_sha256, read_checkpoint, used_teachers,
                              verify_teachers)
from tests import fakedata
from tests.refnets import REFERENCE, randomize_

ROOT = Path(__file__).resolve().parents[1]


def profile_teachers(name: str) -> list:
    return sorted({p["teacher"] for p in load_yaml(ROOT / "params" / f"{name}.yaml")["pairs"]})


TEACHERS = sorted(set(profile_teachers("cifar100")) | set(profile_teachers("cifar10")))
STUDENTS = ["resnet20", "resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"]


def reference_net(arch: str, num_classes: int = 100, seed: int = 0):
    return randomize_(REFERENCE[arch][1](num_classes), seed).eval()


def save_repdistiller(path: Path, state: dict, **extra) -> Path:
    """What RepDistiller's train_teacher.py saves every 40 epochs (ckpt_epoch_240.pth), in
    the pre-1.6 (non-zip) serialization its PyTorch 0.4 wrote."""
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(72.0),
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.0005, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0005,
                                                "nesterov": False, "params": list(range(3))}]}, **extra},
               path, _use_new_zipfile_serialization=False)
    return path


@functools.lru_cache(maxsize=None)
def _shapes(arch: str, num_classes: int) -> tuple:
    return tuple((k, v.dtype, v.shape) for k, v in REFERENCE[arch][1](num_classes).state_dict().items())


def tiny_state(arch: str, num_classes: int = 100) -> dict:
    """A reference-layout state dict of stride-0 tensors (a few bytes on disk)."""
    return {k: torch.zeros((), dtype=dtype).expand(shape) for k, dtype, shape in _shapes(arch, num_classes)}


def test_every_profile_teacher_has_a_reference_layout():
    assert {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet50"} <= set(TEACHERS)
    assert set(TEACHERS) <= set(REFERENCE)


# ----------------------------------------------------------------------------- key maps
@pytest.mark.parametrize("arch", TEACHERS + STUDENTS)
def test_reference_checkpoint_loads_tensor_by_tensor(arch):
    ref = reference_net(arch)
    state = ref.state_dict()
    model = load_reference_state(create_model(arch, 100), state).eval()
    ours = model.state_dict()
    assert len(ours) == len(state)  # none left over, none missing
    # every reference tensor arrives, unchanged, at exactly one kdbench tensor (values are
    # distinct per tensor); and the network computes what the reference computes
    float_ours = {k: v for k, v in ours.items() if v.is_floating_point()}
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        hits = [k for k, v in float_ours.items() if v.shape == value.shape and torch.equal(v, value)]
        assert len(hits) == 1, (key, hits)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())), (got - want).abs().max()


@pytest.mark.parametrize("arch", TEACHERS)
def test_saved_in_reference_layout_and_loaded_back_gives_identical_logits(arch, tmp_path):
    model = create_model(arch, 100)
    randomize_(model, seed=3).eval()
    path = save_repdistiller(tmp_path / "ckpt_epoch_240.pth", to_reference_state(model))
    state, epoch = read_checkpoint(path)
    assert epoch == 240
    assert set(state) == {k for k, _, _ in _shapes(arch, 100)}  # the reference's exact key set
    back = load_reference_state(create_model(arch, 100), state).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_missing_unexpected_and_misshapen_keys_are_named():
    state = reference_net("resnet56").state_dict()
    # PyTorch 0.4.0 saved no num_batches_tracked buffers: that is accepted
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_reference_state(create_model("resnet56", 100), old)
    missing = {k: v for k, v in state.items() if k != "layer2.3.bn1.running_var"}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key\(s\): layer2\.3\.bn1\.running_var"):
        load_reference_state(create_model("resnet56", 100), missing)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key\(s\): layer4\.0\.conv1\.weight"):
        load_reference_state(create_model("resnet56", 100), {**state, "layer4.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight has shape \[100, 64\], resnet56 needs \[10, 64\]"):
        load_reference_state(create_model("resnet56", 10), state)
    # a resnet110 file is not a resnet56
    with pytest.raises(CheckpointMismatchError, match="unexpected key"):
        load_reference_state(create_model("resnet56", 100), reference_net("resnet110").state_dict())


def test_dataparallel_prefix_is_removed():
    ref = reference_net("wrn_16_2")
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    model = load_reference_state(create_model("wrn_16_2", 100), state).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5 * float(ref(x).abs().max()))


# ----------------------------------------------------------------------------- weights_only
def test_a_pickle_needing_more_than_weights_is_refused(tmp_path):
    state = tiny_state("resnet56")
    # RepDistiller's resnet56_last.pth: the state plus the argparse options object
    last = tmp_path / "resnet56_last.pth"
    torch.save({"opt": argparse.Namespace(learning_rate=0.05), "model": state}, last)
    with pytest.raises(ExternalTeacherError, match="refused: it does not load with torch.load\\(weights_only=True\\)"):
        read_checkpoint(last)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "x": Evil()}, evil)
    with pytest.raises(ExternalTeacherError, match="refused"):
        read_checkpoint(evil)
    assert not marker.exists()
    good = save_repdistiller(tmp_path / "good.pth", state)  # an optimizer state is fine
    assert set(read_checkpoint(good)[0]) == set(state)


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "model": {"a": 1}}, tmp_path / "x.pth")
    with pytest.raises(ExternalTeacherError, match="holds no state dict"):
        read_checkpoint(tmp_path / "x.pth")


# ----------------------------------------------------------------------------- the profile
def small_profile(tmp_path: Path, spec: dict, **extra) -> dict:
    return {"datasets": {"cifar100": {"data_root": str(tmp_path / "data"), "val_size": 100}},
            "pairs": [{"teacher": "resnet56", "student": "resnet20"}], "methods": ["vanilla", "kd"], "seeds": [0],
            "teacher_train": {"epochs": 1, "batch_size": 16}, "student_train": {"epochs": 1, "batch_size": 16},
            "results_dir": str(tmp_path / "results"), "tracking": {"enabled": False},
            "teachers": {"cifar100": {"resnet56": spec}}, **extra}


def test_wrong_hash_and_missing_file_fail_before_any_job(tmp_path, monkeypatch):
    path = save_repdistiller(tmp_path / "r56.pth", tiny_state("resnet56"))
    digest = file_sha256(path)
    bad = "0" * 64
    prof = validate_profile(small_profile(tmp_path, {"checkpoint": str(path), "sha256": bad}))
    with pytest.raises(ExternalTeacherError, match=f"has sha256 {digest}, but the profile pins {bad}"):
        verify_teachers(prof)
    prof = validate_profile(small_profile(tmp_path, {"checkpoint": str(path), "sha256": digest.upper()}))
    (rec,) = verify_teachers(prof)
    assert rec["sha256"] == digest and rec["num_classes"] == 100

    # cached by (path, size, mtime): a second check does not hash again; a changed file is re-checked
    import kdbench.teachers as kt

    calls = []
    real = kt.file_sha256
    monkeypatch.setattr(kt, "file_sha256", lambda p: calls.append(p) or real(p))
    verify_teachers(prof)
    assert calls == []
    save_repdistiller(path, tiny_state("resnet56"), note="changed")
    os.utime(path, ns=(1, 1))
    with pytest.raises(ExternalTeacherError, match="but the profile pins"):
        verify_teachers(prof)
    assert len(calls) == 1

    gone = validate_profile(small_profile(tmp_path, {"checkpoint": "nowhere/r56.pth", "sha256": None,
                                                     "url": "http://example.invalid/r56.pth"}))
    monkeypatch.setenv("KDBENCH_TEACHERS", str(tmp_path / "tdir"))
    with pytest.raises(ExternalTeacherError) as err:
        verify_teachers(gone, params="p.yaml")
    msg = str(err.value)
    assert str(tmp_path / "tdir" / "nowhere" / "r56.pth") in msg and "KDBENCH_TEACHERS" in msg
    assert "kdbench fetch-teachers --params p.yaml --download" in msg


def test_a_wrong_arch_file_fails_at_verification(tmp_path):
    path = save_repdistiller(tmp_path / "r110.pth", tiny_state("resnet110"))
    prof = validate_profile(small_profile(tmp_path, {"checkpoint": str(path), "sha256": None}))
    with pytest.raises(CheckpointMismatchError, match="does not fit resnet56"):
        verify_teachers(prof, quiet=True)


def test_spec_errors_are_named(tmp_path):
    from kdbench.errors import KDBenchError

    with pytest.raises(KDBenchError, match="sha256"):  # required
        validate_profile(small_profile(tmp_path, {"checkpoint": "x.pth"}))
    with pytest.raises(KDBenchError, match="chekpoint"):
        validate_profile(small_profile(tmp_path, {"chekpoint": "x.pth", "sha256": None}))
    with pytest.raises(KDBenchError, match="teacher_seed"):
        validate_profile(small_profile(tmp_path, {"checkpoint": "x.pth", "sha256": None}, teacher_seed=None))
    bad = small_profile(tmp_path, {"checkpoint": "x.pth", "sha256": None})
    bad["teachers"]["cifar100"]["resnet57"] = {"checkpoint": "y.pth", "sha256": None}
    with pytest.raises(KDBenchError, match="unknown arch 'resnet57'"):
        validate_profile(bad)


def test_shipped_teachers_file_fits_the_cifar100_tar_layout(tmp_path, monkeypatch):
    """params/teachers/cifar100.yaml: every cifar100-profile teacher, at the paths of
    mdistiller's cifar_teachers.tar (download_ckpts/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth)."""
    prof = validate_profile({**load_yaml(ROOT / "params" / "cifar100.yaml"), "teachers": "params/teachers/cifar100.yaml"})
    used = used_teachers(prof)
    assert sorted(t.arch for t in used) == profile_teachers("cifar100")
    root = tmp_path / "download_ckpts"
    for t in used:
        ref_name = REFERENCE[t.arch][0]
        assert t.checkpoint == f"cifar_teachers/{ref_name}_vanilla/ckpt_epoch_240.pth"
        assert t.url == f"http://shape2prog.csail.mit.edu/repo/{ref_name}_vanilla/ckpt_epoch_240.pth"
        assert 70 < t.reported_top1 < 80 and "RepDistiller" in t.source
        (root / f"cifar_teachers/{ref_name}_vanilla").mkdir(parents=True)
        save_repdistiller(root / t.checkpoint, tiny_state(t.arch))
    monkeypatch.setenv("KDBENCH_TEACHERS", str(root))
    prof["results_dir"] = str(tmp_path / "results")
    assert len(verify_teachers(prof, quiet=True)) == len(used)


# ----------------------------------------------------------------------------- the import job
def test_import_teacher_measures_accuracy_and_writes_teacher_outputs(tmp_path, capsys):
    from kdbench.cli import main
    from kdbench.data.cache import load_dataset
    from kdbench.data.loader import make_loader
    from kdbench.engine.model_io import load_deployed, load_model

    fakedata.write_cifar100(str(tmp_path / "data"), per_class=3, n_test_per_class=1)
    ref = reference_net("resnet56", seed=5)
    path = save_repdistiller(tmp_path / "r56.pth", ref.state_dict())
    spec = {"checkpoint": str(path), "sha256": file_sha256(path), "reported_top1": 72.34,
            "source": "github:HobbitLong/RepDistiller README.md"}
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(small_profile(tmp_path, spec)))
    assert main(["import-teacher", "--params", str(params), "--dataset", "cifar100", "--arch", "resnet56",
                 "--seed", "0", "--tracking", "off"]) == 0
    out = tmp_path / "results" / "teachers" / "cifar100" / "resnet56" / "s0"
    metrics = json.loads((out / "metrics.json").read_text())
    # the accuracy, computed independently with the reference network on the test split
    ds = load_dataset("cifar100", {"data_root": str(tmp_path / "data"), "val_size": 100}, tmp_path / "results")
    correct = n = 0
    with torch.no_grad():
        for batch in make_loader(ds, "test", 64, train=False):
            correct += int((ref(batch["image"]).argmax(1) == batch["label"]).sum())
            n += len(batch["label"])
    assert n == 100 and metrics["top1"] == pytest.approx(correct / n, abs=1e-9)
    assert metrics["reported_top1"] == pytest.approx(0.7234) and metrics["source"] == spec["source"]
    assert metrics["checkpoint_sha256"] == spec["sha256"] and metrics["external"] is True
    assert metrics["kind"] == "teacher" and metrics["arch"] == "resnet56" and metrics["epochs"] == 240
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0       # calibration, like a trained teacher
    # model.pt in kdbench's format: the teacher loader and the deployed-model loader read it
    model, meta = load_model(out / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5 * float(ref(x).abs().max()))
    assert meta["arch"] == "resnet56" and meta["num_classes"] == 100
    deployed, _ = load_deployed(out / "model.pt")
    with torch.no_grad():
        assert torch.equal(deployed.predict(x), model(x))
    # a second call finds the same checkpoint imported and does nothing
    before = (out / "model.pt").stat().st_mtime_ns
    assert main(["import-teacher", "--params", str(params), "--dataset", "cifar100", "--arch", "resnet56",
                 "--tracking", "off"]) == 0
    assert (out / "model.pt").stat().st_mtime_ns == before
    # no spec for this arch: a clear error
    capsys.readouterr()
    assert main(["import-teacher", "--params", str(params), "--dataset", "cifar100", "--arch", "resnet20",
                 "--tracking", "off"]) == 2
    err = capsys.readouterr().err
    assert err == ("kdbench: error: the profile names no external teacher for cifar100/resnet20 "
                   "(teachers.cifar100.resnet20); train it with `kdbench train-teacher`\n"), err


def test_fetch_teachers_without_download_says_where(tmp_path, capsys):
    from kdbench.cli import main

    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(small_profile(tmp_path, {"checkpoint": str(tmp_path / "absent.pth"),
                                                              "sha256": None})))
    assert main(["fetch-teachers", "--params", str(params)]) == 1
    assert f"MISSING  cifar100/resnet56: external teacher cifar100/resnet56: checkpoint not found at " \
           f"{tmp_path / 'absent.pth'}" in capsys.readouterr().out
    # asked to download, with no url to download from
    assert main(["fetch-teachers", "--params", str(params), "--download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdbench: error: external teacher cifar100/resnet56: no url to download from; "), err
    assert f"checkpoint not found at {tmp_path / 'absent.pth'}" in err and err.count("\n") == 1, err


def test_external_teacher_spec_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_TEACHERS", str(tmp_path))
    prof = {"teachers": {"cifar100": {"vgg13": {"checkpoint": "https://h.example/a/b/vgg13.pth", "sha256": None}}}}
    t = external_teacher(prof, "cifar100", "vgg13")
    assert t.is_url and t.download_url == "https://h.example/a/b/vgg13.pth"
    assert t.path == tmp_path / "h.example" / "a" / "b" / "vgg13.pth"
    assert external_teacher(prof, "cifar100", "vgg8") is None


# ----------------------------------------------------------------------------- the DAG
@pytest.mark.slow
def test_dry_run_of_cifar100_profile_with_external_teachers_plans_no_teacher_training(tmp_path):
    from tests.test_pipeline import copy_repo, env_for, job_counts

    repo = copy_repo(tmp_path / "repo")
    prof = load_yaml(ROOT / "params" / "cifar100.yaml")
    prof.update(methods=["vanilla", "kd"], seeds=[0])  # all 10 pairs (all 6 teachers), a smaller DAG
    tdir = tmp_path / "ckpts"
    for arch in profile_teachers("cifar100"):
        ref_name = REFERENCE[arch][0]
        (tdir / f"cifar_teachers/{ref_name}_vanilla").mkdir(parents=True)
        save_repdistiller(tdir / f"cifar_teachers/{ref_name}_vanilla/ckpt_epoch_240.pth", tiny_state(arch))
    (repo / "params" / "ext.yaml").write_text(yaml.safe_dump({**prof, "teachers": "params/teachers/cifar100.yaml"}))
    (repo / "params" / "own.yaml").write_text(yaml.safe_dump(prof))
    env = env_for(tmp_path, KDBENCH_TEACHERS=str(tdir))
    snake = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "-n", "-p"]

    run = subprocess.run(snake + ["--configfile", "params/ext.yaml"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout + run.stderr
    counts = job_counts(out)
    assert counts.get("import_teacher") == 6 and "teacher" not in counts, counts
    assert counts["distill"] == 20 and "kdbench train-teacher" not in out
    assert out.count("kdbench import-teacher") == 6

    # the same profile without them trains its teachers (the test can tell the two apart)
    own = subprocess.run(snake + ["--configfile", "params/own.yaml"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert own.returncode == 0 and job_counts(own.stdout + own.stderr).get("teacher") == 6

    # a missing checkpoint stops the DAG build with the message saying where to put it
    (tdir / "cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth").unlink()
    bad = subprocess.run(snake + ["--configfile", "params/ext.yaml"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode != 0
    assert f"checkpoint not found at {tdir / 'cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth'}" in bad.stdout + bad.stderr


# ----------------------------------------------------------------------------- published numbers
def test_published_cifar100_numbers_have_the_contract_shape_and_sources():
    entries = load_yaml(ROOT / "params" / "published" / "cifar100.yaml")["entries"]
    pairs = {(p["teacher"], p["student"]) for p in load_yaml(ROOT / "params" / "cifar100.yaml")["pairs"]}
    seen = set()
    for e in entries:
        assert set(e) == {"dataset", "teacher", "student", "method", "top1", "source", "selection", "runs", "note"}, e
        assert e["dataset"] == "cifar100" and (e["teacher"], e["student"]) in pairs, e
        assert e["method"] in {"teacher", "vanilla", "kd", "fitnet", "at", "crd", "reviewkd", "dkd",
                               "tdd", "cid", "fcfd", "e2kd"}, e
        assert isinstance(e["top1"], float) and 50 < e["top1"] < 90, e
        assert e["selection"] in {"best", "last", "unknown"} and (e["runs"] == "unknown" or e["runs"] in (1, 3, 5))
        assert e["source"].strip(), e
        key = (e["teacher"], e["student"], e["method"])
        assert key not in seen, key  # one published value per cell and method
        seen.add(key)
    for method in ("teacher", "vanilla", "kd", "fitnet", "at", "crd", "dkd"):
        assert {(t, s) for t, s, m in seen if m == method} == pairs, method
    # the teacher rows are the reported_top1 of the teachers the cifar100 teachers file imports
    specs = load_yaml(ROOT / "params" / "teachers" / "cifar100.yaml")["cifar100"]
    for e in entries:
        if e["method"] == "teacher":
            assert specs[e["teacher"]]["reported_top1"] == e["top1"], e


def test_download_only_when_asked_and_checked(tmp_path, monkeypatch, capsys):
    from kdbench.cli import main

    src = save_repdistiller(tmp_path / "published.pth", tiny_state("resnet56"))
    digest = file_sha256(src)
    monkeypatch.setenv("KDBENCH_TEACHERS", str(tmp_path / "tdir"))
    dest = tmp_path / "tdir" / "cifar_teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth"

    def write(spec):
        params = tmp_path / "p.yaml"
        params.write_text(yaml.safe_dump(small_profile(tmp_path, {
            "checkpoint": "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth", **spec})))
        return str(params)

    # pinned to another hash: downloaded, refused, not kept
    params = write({"sha256": "f" * 64, "url": src.as_uri()})
    assert main(["fetch-teachers", "--params", params, "--download"]) == 2
    assert "the profile pins ffff" in capsys.readouterr().err and not dest.exists()
    # not asked: nothing is fetched
    params = write({"sha256": digest, "url": src.as_uri()})
    assert main(["fetch-teachers", "--params", params]) == 1 and not dest.exists()
    assert main(["fetch-teachers", "--params", params, "--download"]) == 0
    assert file_sha256(dest) == digest and "OK       cifar100/resnet56" in capsys.readouterr().out
    # no network: the error says where to put the file instead
    dest.unlink()
    params = write({"sha256": digest, "url": "http://127.0.0.1:9/ckpt_epoch_240.pth"})
    assert main(["fetch-teachers", "--params", params, "--download"]) == 2
    err = capsys.readouterr().err
    assert "download from http://127.0.0.1:9/ckpt_epoch_240.pth failed" in err and "put the file there" in err
    assert str(dest) in err and not dest.exists()
