"""scripts/bench_gpu.py runs on CPU (tiny sizes) and reports both paths and their ratio."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_runs_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--n-train", "64", "--batch-sizes", "32", "--epochs", "1",
                       "--teacher", "resnet8", "--student", "resnet8", "--image-size", "16",
                       "--num-classes", "10", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["engine_img_s"] > 0 and row["bare_img_s"] > 0
    assert abs(row["ratio"] - row["engine_img_s"] / row["bare_img_s"]) < 1e-9
    assert abs(row["projected_240_epoch_min"] - 240 * 50_000 / row["engine_img_s"] / 60) < 1e-6
    assert "not measured: no device" in capsys.readouterr().out
