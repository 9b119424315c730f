"""Data-parallel jobs (kdbench.engine.distributed) on CPU with gloo and 2 processes.

A DDP run with global batch B must match a single-process run with batch B to float
tolerance (same batches, BN over the global batch, averaged gradients), for kd, a feature
method (fitnet, whose adapter has a BatchNorm too) and CID (whose prototypes are
accumulated over both ranks' samples), run in one ``torch.multiprocessing.spawn``; and
the teacher job through the real command line, ``torchrun --nproc-per-node 2 -m
kdbench.cli train-teacher``. Rank 0 alone writes; a checkpoint resumes only with its own
world size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench.config import teacher_config
from kdbench.hparams import student_config
from kdbench.profile import validate_profile
from kdbench.data.cache import load_dataset
from kdbench.data.loader import make_loader
from kdbench.engine import distributed as kdist
from kdbench import io as kio
from kdbench.engine import trainer
from tests.tiny import tiny_profile, write_profile

ROOT = Path(__file__).resolve().parents[1]

WORLD = 2
METHODS = ("kd", "fitnet", "cid")
#: float32 training over a few steps: the DDP run differs from the single one only in the
#: order of float sums (BN statistics, gradient averaging, prototype sums); measured:
#: kd 1.2e-7, fitnet 3.8e-6, cid 1.8e-7, teacher 2.4e-7 (at: 6e-7). A large learning
#: rate amplifies them (at, lr 0.05: 2e-4), hence lr 0.01 here
ATOL = 2e-5


def _profile(tmp: Path) -> dict:
    return validate_profile(tiny_profile(
        tmp,
        datasets={"shapes": {"image_size": 16, "n_train": 64, "n_val": 16, "n_test": 16, "n_test_ood": 16, "seed": 0}},
        teacher_train={"epochs": 1, "batch_size": 32, "lr": 0.05, "schedule": "cosine"},
        student_train={"epochs": 2, "batch_size": 32, "lr": 0.01, "schedule": "step", "milestones": [1]},
        # CID's class-shape loss couples the samples of a batch (computed per rank's
        # sub-batch in DDP); without it every CID term is a per-sample mean
        method_params={"cid": {"class_weight": 0.0}},
        methods=list(METHODS)))


def _worker(rank: int, world: int, init_file: str, jobs: list) -> None:
    import torch.distributed as dist

    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for cfg, out, results, teacher_path in jobs:
            trainer.run(cfg, Path(out), results_dir=Path(results), teacher_path=teacher_path)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    prof = _profile(tmp)
    results = Path(prof["results_dir"])
    tdir = results / "teachers/shapes/resnet14/s0"
    trainer.run(teacher_config(prof, "shapes", "resnet14", 0), tdir, results_dir=results)
    jobs, single = [], {}
    for m in METHODS:
        cfg = student_config(prof, "shapes", "resnet14", "resnet8", m, 0)
        single[m] = tmp / "single" / m
        trainer.run(cfg, single[m], results_dir=results, teacher_path=tdir / "model.pt")
        jobs.append((cfg, str(tmp / "ddp" / m), str(results), tdir / "model.pt"))
    single["teacher"] = tdir
    # the teacher job (method vanilla) through `torchrun ... kdbench train-teacher`, started
    # first, so that it runs while the spawned workers below run the students
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               KDBENCH_ROOT=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "kdbench.cli", "train-teacher", "--params", str(write_profile(tmp, prof)), "--dataset", "shapes",
           "--arch", "resnet14", "--seed", "0", "--tracking", "off", "--out", str(tmp / "ddp" / "teacher")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(WORLD, str(tmp / "init"), jobs), nprocs=WORLD, join=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert out.count(" top1_sel=") == 1, out[-3000:]  # rank 0 alone reports
    return tmp, single


def _max_diff(a: Path, b: Path) -> float:
    sa = kio.load_torch(a / "model.pt")["state_dict"]
    sb = kio.load_torch(b / "model.pt")["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0
               for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("method", METHODS + ("teacher",))
def test_ddp_matches_single_process(runs, method):
    tmp, single = runs
    ddp = tmp / "ddp" / method
    diff = _max_diff(ddp, single[method])
    print(f"\n{method}: DDP(2) vs single max |Δ| over model.pt = {diff:.3g}", file=sys.stderr)
    assert diff < ATOL
    hs = (single[method] / "history.csv").read_text().splitlines()
    hd = (ddp / "history.csv").read_text().splitlines()
    assert hs[0] == hd[0]  # the same loss terms, logged as the global batch's mean
    for ls, ld in zip(hs[1:], hd[1:]):
        vs, vd = ls.split(","), ld.split(",")
        for key, x, y in zip(hs[0].split(","), vs, vd):
            if key.startswith("loss"):
                assert float(x) == pytest.approx(float(y), abs=ATOL), key
    ms, md = (json.loads((p / "metrics.json").read_text()) for p in (single[method], ddp))
    assert ms["config_hash"] == md["config_hash"] and ms["n_train"] == md["n_train"]
    assert not (ddp / "checkpoint.pt").exists()


def test_ddp_cid_prototypes_over_all_ranks(runs):
    tmp, single = runs
    sa = kio.load_torch(single["cid"] / "model.pt")["state_dict"]
    sb = kio.load_torch(tmp / "ddp" / "cid" / "model.pt")["state_dict"]
    for key in ("prototypes", "next_prototypes"):
        assert sa[key].abs().sum() > 0  # built (warm-up of 1 epoch, then 1 epoch trained with them)
        assert torch.allclose(sa[key], sb[key], atol=ATOL, rtol=0), key
    assert bool(sb["prototypes_ready"])


def test_ddp_rank0_alone_writes(runs):
    tmp, _ = runs
    for m in METHODS + ("teacher",):
        out = tmp / "ddp" / m
        # the outputs, their seals (kdbench.integrity) and, for the job run by the CLI, its lock
        lock = [".kdbench-job.lock"] if m == "teacher" else []
        assert sorted(p.name for p in out.iterdir()) == lock + [".metrics.json.sum", ".model.pt.sum", "artifacts.json",
                                                                 "history.csv", "metrics.json", "model.pt"]


# ------------------------------------------------------------------ without processes
def test_shards_are_the_slices_of_the_global_batch(tmp_path):
    prof = _profile(tmp_path)
    ds = load_dataset("shapes", prof["datasets"]["shapes"], Path(prof["results_dir"]))
    whole = make_loader(ds, "train", 32, train=True, seed=3)
    parts = [make_loader(ds, "train", 32, train=True, seed=3, shard=(r, 2)) for r in range(2)]
    for lo in [whole] + parts:
        lo.set_epoch(5)
    assert len(parts[0]) == len(whole) == 2
    for b, p0, p1 in zip(whole, *parts):
        for key in ("image", "label", "index"):
            assert p0[key].shape[0] == 16
            assert torch.equal(torch.cat([p0[key], p1[key]]), b[key]), key


def test_batch_size_must_divide_the_world():
    w = kdist.World(rank=0, size=3, local_rank=0, backend="gloo")
    assert w.check_batch_size(96) == 32
    with pytest.raises(kdist.DistributedError, match="batch_size 64 is not divisible by the world size 3"):
        w.check_batch_size(64)


def test_resume_with_another_world_size_is_an_error(tmp_path):
    prof = _profile(tmp_path)
    results = Path(prof["results_dir"])
    cfg = teacher_config(prof, "shapes", "resnet8", 0)
    cfg.recipe["epochs"] = 2
    out = tmp_path / "t"
    assert trainer.run(cfg, out, results_dir=results, max_epochs=1) == {"interrupted_after_epoch": 1}
    ckpt = kio.load_torch(out / trainer.CHECKPOINT)
    assert ckpt["world_size"] == 1
    ckpt["world_size"] = 2
    kio.save_torch(ckpt, out / trainer.CHECKPOINT)
    with pytest.raises(kdist.DistributedError, match="2 process.*same number.*this job has 1"):
        trainer.run(cfg, out, results_dir=results)


def test_no_torchrun_env_is_one_process(monkeypatch):
    for v in kdist.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    assert kdist.init_from_env("cpu") is None and kdist.current() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(kdist.DistributedError, match="torchrun --nproc-per-node 2"):
        kdist.init_from_env("cpu")


def test_file_loader_shards_are_slices_of_the_global_batches():
    from kdbench.data.loader import _EpochSampler, _ShardBatches

    sampler = _EpochSampler(70, seed=1, shuffle=True)
    sampler.epoch = 4
    order = list(sampler)
    for drop_last in (True, False):
        shards = [list(_ShardBatches(sampler, 32, drop_last, (r, 2))) for r in range(2)]
        n_batches = 2 if drop_last else 3
        assert len(shards[0]) == len(shards[1]) == n_batches == len(_ShardBatches(sampler, 32, drop_last, (0, 2)))
        for b in range(n_batches):
            assert shards[0][b] + shards[1][b] == order[b * 32:(b + 1) * 32]


def test_profile_batch_size_must_divide_nproc(tmp_path):
    from kdbench.config import ParamsError

    prof = tiny_profile(tmp_path, nproc_per_node=3)
    with pytest.raises(ParamsError, match=r"teacher_train.batch_size 64 is not divisible by nproc_per_node 3"):
        validate_profile(prof)
    assert validate_profile(tiny_profile(tmp_path, nproc_per_node=2))["nproc_per_node"] == 2
