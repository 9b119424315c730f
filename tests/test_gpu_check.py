"""scripts/gpu_check.py --device cpu --tiny: every check of the GPU script runs on the CPU at
toy sizes (the same code as on a GPU, where bf16 and compile take effect), every method
included, and a failed check makes it exit non-zero."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_tiny_cpu_run_passes_every_check(gpu_check, tmp_path):
    from kdbench.methods import iter_method_names

    # every shipped method (one params/methods file each); other test modules register
    # throwaway methods (a NaN loss on purpose) in the same worker process: not these
    shipped = sorted(p.stem for p in (ROOT / "params" / "methods").glob("*.yaml"))
    assert set(shipped) <= set(iter_method_names()) and len(shipped) >= 31
    out = tmp_path / "rows.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--json", str(out), "--methods", *shipped]) == 0
    rows = json.loads(out.read_text())
    status = {(r["section"], r["check"]): r["status"] for r in rows}
    for method in shipped:  # each check of section 1
        assert status[(method, "fp32 steps")] == "pass", method
        assert status[(method, "checkpoint round trip")] == "pass", method
        assert status[(method, "vs CPU float64")] == "pass", method
        assert status[(method, "bf16 steps")] == "n/a", method  # bf16 autocast: CUDA only, as the engine
    for check in [("compile", "kd compile vs eager"), ("compile", "at compile vs eager"),
                  ("ddp", "torchrun"), ("ddp", "kd torchrun vs one"), ("ddp", "cid torchrun vs one"),
                  ("bench", "bench_gpu.py"), ("evaluate", "cpu vs cpu")]:
        assert status[check] == "pass", check
    assert not [r for r in rows if r["status"] == "FAIL"]


def test_a_failed_check_exits_non_zero(gpu_check, monkeypatch, capsys):
    # no fp32 step can match float64 exactly: a zero tolerance fails that check
    monkeypatch.setitem(gpu_check.TOL, "float64", 0.0)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--methods", "kd", "--sections", "method"]) == 1
    out = capsys.readouterr().out
    assert "FAILED kd vs CPU float64" in out and "1 failed" in out
