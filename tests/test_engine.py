"""Engine: baselines, determinism, checkpoints/resume (incl. SIGKILL), NaN guard, plugins, CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.config import teacher_config
from kdbench.hparams import student_config
from kdbench.profile import validate_profile
from kdbench.data.cache import load_dataset
from kdbench.data.loader import make_loader
from kdbench.engine import model_io, trainer
from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.methods import METHODS, Distiller, get_method, register_method
from kdbench.models import create_model
from tests.tiny import tiny_profile, write_profile

ROOT = Path(__file__).resolve().parents[1]
KDBENCH = [sys.executable, "-m", "kdbench.cli"]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               KDBENCH_ROOT=str(ROOT), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    prof = validate_profile(tiny_profile(tmp))
    results = Path(prof["results_dir"])
    tcfg = teacher_config(prof, "shapes", "resnet14", 0)
    tdir = results / "teachers/shapes/resnet14/s0"
    trainer.run(tcfg, tdir, results_dir=results)
    return tmp, prof, results, tdir / "model.pt"


# ----------------------------------------------------------------- baselines
@pytest.mark.parametrize("method,terms", [("vanilla", {"ce"}), ("kd", {"ce", "kd"}), ("fitnet", {"ce", "hint"}),
                                          ("at", {"ce", "at"}), ("dkd", {"ce", "dkd"})])
def test_baseline_terms_finite_and_decreasing(tiny, method, terms):
    _, prof, results, tpath = tiny
    ds = load_dataset("shapes", prof["datasets"]["shapes"], results)
    teacher, _ = model_io.load_model(tpath)
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", method, 0)
    torch.manual_seed(0)
    d = model_io.build_distiller(cfg, ds.num_classes, ds.image_size, teacher if cfg.teacher else None)
    d.on_epoch_start(40)  # past DKD's warm-up
    batch = next(iter(make_loader(ds, "train", 32, train=False)))
    opt = torch.optim.SGD([p for g in d.param_groups(0.0) for p in g["params"]], lr=0.02, momentum=0.9)
    totals = []
    for _ in range(12):
        out = d.loss(batch)
        assert set(out) == terms
        assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
        total = sum(out.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0] * 0.9
    if teacher is not None and cfg.teacher:
        assert all(p.grad is None for p in d.teacher.parameters())
        assert not d.teacher.training


def test_teacher_stays_frozen_in_train_mode(tiny):
    _, prof, results, tpath = tiny
    teacher, _ = model_io.load_model(tpath)
    d = get_method("kd")(create_model("resnet8", 8), teacher, 8, {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4})
    d.train()
    assert d.student.training and not d.teacher.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    assert not any(k.startswith("teacher.") for k in d.trainable_state())


def test_dkd_warmup_scales_with_epochs():
    d = get_method("dkd")(create_model("resnet8", 4), create_model("resnet8", 4), 4,
                          {"ce_weight": 1, "tckd_weight": 1, "nckd_weight": 8, "temperature": 4, "warmup_epochs": 20},
                          epochs=24)  # 20 of 240 -> 2 of 24
    d.on_epoch_start(0)
    assert d.warmup_factor() == pytest.approx(0.5)
    d.on_epoch_start(1)
    assert d.warmup_factor() == 1.0


def test_unknown_hparam_and_missing_hparam():
    with pytest.raises(UnknownChoiceError, match="kd_weigth.*kd_weight"):
        get_method("kd").check_hparams({"ce_weight": 0.1, "kd_weigth": 0.9, "temperature": 4})
    with pytest.raises(KDBenchError, match="missing.*temperature"):
        get_method("kd").check_hparams({"ce_weight": 0.1, "kd_weight": 0.9})


# ----------------------------------------------------------------- optimizer and schedules
def _sgd_pair(nesterov, weight_decays, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    twin = torch.nn.Sequential(*[type(m)(*a) for m, a in zip(model, [(3, 4, 3), (4,), (), (144, 5)])])
    twin.load_state_dict(model.state_dict())

    def groups(m):
        return [{"params": list(m[0].parameters()) + list(m[1].parameters()), "weight_decay": weight_decays[0]},
                {"params": list(m[3].parameters()), "weight_decay": weight_decays[1]}]
    return model, twin, groups


@pytest.mark.parametrize("nesterov,foreach", [(False, False), (True, False), (True, True), (False, True)])
def test_sgd_is_bit_identical_to_torch_sgd(nesterov, foreach):
    from kdbench.optim import SGD

    ours_model, torch_model, groups = _sgd_pair(nesterov, (5e-4, 0.0))
    ours = SGD(groups(ours_model), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    ref = torch.optim.SGD(groups(torch_model), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4,
                          foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        lr = 0.1 * 0.5 ** (step // 2)  # the lr changes between steps, as it does per epoch
        ours.set_lr(lr)
        for g in ref.param_groups:
            g["lr"] = lr
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        for model, opt in ((ours_model, ours), (torch_model, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for a, b in zip(ours_model.parameters(), torch_model.parameters()):
            assert torch.equal(a, b), f"step {step}: parameters differ from torch.optim.SGD"


def test_sgd_state_round_trip_continues_identically(tmp_path):
    from kdbench.optim import SGD

    a_model, b_model, groups = _sgd_pair(True, (1e-3, 1e-3))
    a = SGD(groups(a_model), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))

    def step(model, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    step(a_model, a)
    step(b_model, SGD(groups(b_model), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3))
    torch.save(a.state_dict(), tmp_path / "opt.pt")
    b = SGD(groups(b_model), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    b.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for _ in range(3):
        step(a_model, a)
        step(b_model, b)
    assert all(torch.equal(p, q) for p, q in zip(a_model.parameters(), b_model.parameters()))
    with pytest.raises(ValueError, match="groups of sizes"):
        SGD([{"params": list(b_model.parameters())}], lr=0.1, momentum=0.9).load_state_dict(a.state_dict())


@pytest.mark.parametrize("schedule", ["step", "cosine", "constant"])
def test_learning_rate_matches_torch_schedulers(schedule):
    from kdbench.optim import learning_rate

    epochs, milestones = 24, [10, 15, 20]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    sched = {"step": lambda: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1),
             "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
             "constant": lambda: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)}[schedule]()
    for epoch in range(epochs):
        ours = learning_rate(epoch, base_lr=0.05, schedule=schedule, epochs=epochs, milestones=milestones, gamma=0.1)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), epoch
        opt.step()
        sched.step()
    assert learning_rate(0, base_lr=0.05, schedule="cosine", epochs=10) == 0.05
    assert learning_rate(15, base_lr=1.0, schedule="step", epochs=30, milestones=[15], gamma=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="'linear'.*step, cosine, constant, onecycle"):
        learning_rate(0, base_lr=0.1, schedule="linear", epochs=3)


def test_onecycle_matches_torch_onecyclelr():
    """``onecycle``: torch's OneCycleLR (its defaults, momentum not cycled) at every step."""
    from kdbench.optim import learning_rate

    total = 5 * 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, cycle_momentum=False)
    for step in range(total):
        ours = learning_rate(step, base_lr=0.1, schedule="onecycle", epochs=5, total_steps=total)
        assert ours == opt.param_groups[0]["lr"], step
        opt.step()
        sched.step()
    assert learning_rate(0, base_lr=0.1, schedule="onecycle", epochs=5, total_steps=total) == pytest.approx(0.1 / 25)
    with pytest.raises(ValueError, match="at least 2 steps"):
        learning_rate(0, base_lr=0.1, schedule="onecycle", epochs=1, total_steps=1)


def test_onecycle_run_sets_the_lr_every_step_and_resumes_identically(tiny, tmp_path, monkeypatch):
    """A training run with ``schedule: onecycle`` sets the lr before every optimiser step
    (counted over the whole run), and a run interrupted after an epoch resumes to the same
    model as one trained straight through."""
    from kdbench.optim import SGD, learning_rate

    _, prof, results, tpath = tiny
    onecycle = validate_profile(dict(prof, student_train={"epochs": 3, "batch_size": 64, "lr": 0.05,
                                                          "schedule": "onecycle"}))
    cfg = student_config(onecycle, "shapes", "resnet14", "resnet8", "kd", 0)
    seen = []
    set_lr = SGD.set_lr
    monkeypatch.setattr(SGD, "set_lr", lambda self, lr: (seen.append(lr), set_lr(self, lr)))
    full = trainer.run(cfg, tmp_path / "full", results_dir=results, teacher_path=tpath)
    steps = 256 // 64  # the tiny profile's 256 training images, batches of 64
    total = 3 * steps
    assert seen == [learning_rate(i, base_lr=0.05, schedule="onecycle", epochs=3, total_steps=total)
                    for i in range(total)]
    trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tpath, max_epochs=1)
    resumed = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tpath)
    assert resumed["top1"] == full["top1"]
    a = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_job_does_not_import_dynamo(tiny):
    """torch.optim and torch.use_deterministic_algorithms import torch._dynamo (about 1.7 s
    per process): a training job uses neither, so its fixed cost stays low."""
    _, prof, results, _ = tiny
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from kdbench.config import teacher_config\n"
        "from kdbench.engine import trainer\n"
        f"prof = json.loads({json.dumps(json.dumps(prof))})\n"
        "cfg = teacher_config(prof, 'shapes', 'resnet8', 0)\n"
        f"trainer.run(cfg, Path({str(results / 'nodynamo')!r}), results_dir=Path(prof['results_dir']), max_epochs=1)\n"
        "bad = [m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=_env())


# ----------------------------------------------------------------- outputs, determinism, resume
def test_outputs_and_determinism(tiny, tmp_path):
    _, prof, results, tpath = tiny
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "kd", 0)
    m1 = trainer.run(cfg, tmp_path / "a", results_dir=results, teacher_path=tpath)
    m2 = trainer.run(cfg, tmp_path / "b", results_dir=results, teacher_path=tpath)
    for key in ("top1", "top1_sel", "top1_ood", "params", "config_hash"):
        assert m1[key] == m2[key]
    assert (tmp_path / "a/history.csv").read_text().split("epoch_s")[0] == (tmp_path / "b/history.csv").read_text().split("epoch_s")[0]
    s1 = torch.load(tmp_path / "a/model.pt", weights_only=True)["state_dict"]
    s2 = torch.load(tmp_path / "b/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    saved = json.loads((tmp_path / "a/metrics.json").read_text())
    for key in ("dataset", "arch", "method", "seed", "epochs", "top1", "top1_sel", "top1_ood", "train_s", "params", "config_hash"):
        assert key in saved
    assert saved["top1_ood"] is not None and 0 <= saved["top1"] <= 1
    assert not (tmp_path / "a/checkpoint.pt").exists()
    assert not list((tmp_path / "a").glob(".*.tmp"))
    assert len((tmp_path / "a/history.csv").read_text().strip().splitlines()) == 1 + cfg.recipe["epochs"]


def test_interrupted_run_resumes_to_identical_numbers(tiny, tmp_path):
    _, prof, results, tpath = tiny
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "dkd", 0)
    full = trainer.run(cfg, tmp_path / "full", results_dir=results, teacher_path=tpath)
    part = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tpath, max_epochs=1)
    assert part == {"interrupted_after_epoch": 1}
    assert (tmp_path / "part/checkpoint.pt").exists() and not (tmp_path / "part/metrics.json").exists()
    resumed = trainer.run(cfg, tmp_path / "part", results_dir=results, teacher_path=tpath)
    for key in ("top1", "top1_sel", "top1_ood", "val_top1"):
        assert resumed[key] == full[key]
    a = torch.load(tmp_path / "full/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_test_every_epoch_records_best_test_and_leaves_training_alone(tiny, tmp_path):
    """Off (the default): no test_top1 column and top1_best_test empty, never the last
    epoch's copy. On: the test top-1 of every epoch in history.csv, top1_best_test = its
    max, and the training itself bit-identical (the test pass draws no random number);
    a resumed run gives the same. metrics.json records the provenance, outside the hash."""
    import csv
    import dataclasses

    _, prof, results, _ = tiny
    off = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    on = dataclasses.replace(off, recipe={**off.recipe, "test_every_epoch": True})
    m_off = trainer.run(off, tmp_path / "off", results_dir=results)
    m_on = trainer.run(on, tmp_path / "on", results_dir=results)
    assert m_off["top1_best_test"] is None and m_off["top1_best_test_epoch"] is None
    assert "test_top1" not in (tmp_path / "off/history.csv").read_text()
    for key in ("top1", "top1_sel", "val_top1", "best_epoch", "top1_ood"):
        assert m_on[key] == m_off[key], key
    rows = list(csv.DictReader(open(tmp_path / "on/history.csv")))
    tests = [float(r["test_top1"]) for r in rows]
    assert len(tests) == on.recipe["epochs"] and tests[-1] == m_on["top1"]
    assert m_on["top1_best_test"] == max(tests) and tests[m_on["top1_best_test_epoch"] - 1] == max(tests)
    assert [r["val_top1"] for r in rows] == [r["val_top1"] for r in csv.DictReader(open(tmp_path / "off/history.csv"))]
    trainer.run(on, tmp_path / "part", results_dir=results, max_epochs=1)
    resumed = trainer.run(on, tmp_path / "part", results_dir=results)
    assert (resumed["top1_best_test"], resumed["top1_best_test_epoch"]) == (m_on["top1_best_test"],
                                                                           m_on["top1_best_test_epoch"])
    prov = json.loads((tmp_path / "off/metrics.json").read_text())["provenance"]
    assert prov["device_kind"].startswith("CPU ") and prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["cpu_capability"] in prov["device_kind"] and prov["gpu_name"] is None
    assert (prov["torch_version"], prov["cuda_version"]) == (torch.__version__, torch.version.cuda)
    assert prov["world_size"] == 1 and prov["global_batch_size"] == off.recipe["batch_size"]
    assert (prov["precision"], prov["compile"], prov["channels_last"]) == ("fp32", False, False)
    assert m_off["config_hash"] == off.config_hash   # provenance is recorded, never hashed
    from kdbench.board.records import PROVENANCE

    assert sorted(prov) == sorted(PROVENANCE)   # each key one runs.csv column


def test_corrupt_checkpoint_restarts_cleanly(tiny, tmp_path, capsys):
    _, prof, results, tpath = tiny
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    metrics = trainer.run(cfg, out, results_dir=results)
    assert "unreadable" in capsys.readouterr().err
    reference = trainer.run(cfg, tmp_path / "ref", results_dir=results)
    assert metrics["top1"] == reference["top1"]


def test_sigkill_then_rerun_matches_uninterrupted(tiny, tmp_path):
    tmp, prof, results, tpath = tiny
    raw = tiny_profile(tmp, student_train={"epochs": 5})
    raw["datasets"]["shapes"]["n_train"] = 1024
    # its own results_dir: other data options than the shared one's (a job never rebuilds
    # another profile's data); the shared teacher is given by hand (--teacher-model)
    raw["results_dir"] = str(tmp_path / "results")
    params = write_profile(tmp_path, raw)
    args = KDBENCH + ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                      "--student", "resnet8", "--method", "kd", "--seed", "0", "--set", "datasets.shapes.n_train=1024",
                      "--teacher-model", str(tpath)]
    ref = subprocess.run(args + ["--out", str(tmp_path / "ref")], env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert not (out / "metrics.json").exists()
    again = subprocess.run(args + ["--out", str(out)], env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch" in again.stderr
    a = json.loads((tmp_path / "ref/metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "top1_sel", "top1_ood", "val_top1"):
        assert a[key] == b[key]


# ----------------------------------------------------------------- NaN guard
@register_method("_test_nan_after_two_steps")
class _NanAfterTwo(Distiller):
    needs_teacher = False

    def loss(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        ce = torch.nn.functional.cross_entropy(self.student(batch["image"]), batch["label"])
        bad = torch.tensor(float("nan")) if self.calls > 2 else ce * 0
        return {"ce": ce, "exploding": bad}


def test_nan_guard_names_epoch_step_and_term(tiny, tmp_path):
    _, prof, results, _ = tiny
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    cfg.method = "_test_nan_after_two_steps"
    with pytest.raises(trainer.NonFiniteLossError, match=r"epoch 1, step 3: .*exploding=nan"):
        trainer.run(cfg, tmp_path / "nan", results_dir=results)
    assert not (tmp_path / "nan/metrics.json").exists()


@register_method("_test_svd_of_nan_features")
class _SvdOfNan(Distiller):
    needs_teacher = False

    def loss(self, batch):
        logits = self.student(batch["image"])
        torch.linalg.svd(logits * float("nan"))  # what kdsvd does once its features diverge
        return {"ce": torch.nn.functional.cross_entropy(logits, batch["label"])}


def test_a_linear_algebra_failure_on_non_finite_features_is_a_divergence(tiny, tmp_path):
    """An SVD (kdsvd) of non-finite features raises LinAlgError inside the loss, before the
    NaN guard sees a total: it is reported as the same divergence (a tuning trial then
    records it and scores it lowest, instead of the job failing)."""
    _, prof, results, _ = tiny
    cfg = student_config(prof, "shapes", "resnet14", "resnet8", "vanilla", 0)
    cfg.method = "_test_svd_of_nan_features"
    with pytest.raises(trainer.NonFiniteLossError, match=r"epoch 1, step 1: loss=non-finite input \(.*svd"):
        trainer.run(cfg, tmp_path / "svd", results_dir=results)


# ----------------------------------------------------------------- plugins through entry points
PLUGIN = '''
import torch.nn.functional as F
from kdbench.methods import Distiller

class LabelSmoothedCE(Distiller):
    """A third-party method: CE with label smoothing, registered via an entry point."""
    needs_teacher = False
    hparam_names = ("smoothing",)
    default_hparams = {"smoothing": 0.1}

    def loss(self, batch):
        logits = self.student(batch["image"])
        return {"ce_smooth": F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams["smoothing"])}
'''


def make_plugin(site: Path) -> None:
    """An installed distribution on a path entry: a module + its dist-info with an
    entry point in the ``kdbench.methods`` group (what ``pip install`` would create)."""
    (site / "kdbench_plugin_ls.py").write_text(PLUGIN)
    info = site / "kdbench_plugin_ls-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-plugin-ls\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.methods]\nsmooth_ce = kdbench_plugin_ls:LabelSmoothedCE\n")


def test_entry_point_plugin_trains_without_editing_kdbench(tiny, tmp_path):
    tmp, prof, results, _ = tiny
    site = tmp_path / "site"
    site.mkdir()
    make_plugin(site)
    env = _env(PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    listed = subprocess.run(KDBENCH + ["list", "methods"], env=env, capture_output=True, text=True, timeout=120)
    assert "smooth_ce" in listed.stdout.split()
    raw = tiny_profile(tmp, methods=["vanilla", "smooth_ce"], student_train={"epochs": 1})
    raw["results_dir"] = str(results)
    params = write_profile(tmp_path, raw)
    run = subprocess.run(KDBENCH + ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                                    "--student", "resnet8", "--method", "smooth_ce", "--seed", "0",
                                    "--out", str(tmp_path / "plug")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "plug/metrics.json").read_text())
    assert metrics["method"] == "smooth_ce" and metrics["hparams"] == {"smoothing": 0.1}
    assert metrics["hparams_source"] == "defaults"  # no params file: not a paper's values


# ----------------------------------------------------------------- CLI errors
def test_cli_unknown_method_names_choices(tiny, tmp_path):
    tmp, prof, results, _ = tiny
    params = write_profile(tmp_path, tiny_profile(tmp))
    run = subprocess.run(KDBENCH + ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                                    "--student", "resnet8", "--method", "kdd", "--seed", "0"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "unknown method 'kdd'" in run.stderr and "did you mean 'kd'" in run.stderr and "vanilla" in run.stderr


def test_cli_missing_teacher_says_how_to_train_it(tiny, tmp_path):
    tmp, prof, results, _ = tiny
    params = write_profile(tmp_path, tiny_profile(tmp_path))
    run = subprocess.run(KDBENCH + ["distill", "--params", str(params), "--dataset", "shapes", "--teacher", "resnet14",
                                    "--student", "resnet8", "--method", "kd", "--seed", "0"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "teacher model" in run.stderr and "kdbench train-teacher" in run.stderr


def test_cli_help_lists_commands_without_importing_torch():
    run = subprocess.run(KDBENCH + ["--help"], env=_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for cmd in ("train-teacher", "distill", "list"):
        assert cmd in run.stdout
    code = "import sys, kdbench.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0
