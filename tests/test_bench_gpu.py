"""scripts/bench_gpu.py runs on CPU (tiny sizes) and reports both paths and their ratio."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_gpu_runs_on_cpu(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--n-train", "64", "--batch-sizes", "32", "--epochs", "1",
                       "--teacher", "resnet8", "--student", "resnet8", "--image-size", "16",
                       "--num-classes", "10", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["engine_img_s"] > 0 and row["bare_img_s"] > 0 and row["ratio"] > 0
    assert row["batch_size"] == 32 and row["pair"] == "resnet8->resnet8" and row["device"] == "cpu"
    assert "not measured: no device" in capsys.readouterr().out


def test_bench_gpu_reports_hand_checked_numbers(tmp_path, capsys, monkeypatch):
    """The report's arithmetic against hand-worked values: engine 2000 img/s, bare loop 2500
    img/s -> ratio 0.8; 240 epochs of 50,000 images at 2000 img/s = 6000 s = 100 min."""
    bench = load_bench()
    monkeypatch.setattr(bench, "engine_img_s", lambda args, bs, work, options: 2000.0)
    monkeypatch.setattr(bench, "bare_img_s", lambda args, bs, options: 2500.0)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--batch-sizes", "64", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["ratio"] == 0.8 and row["projected_240_epoch_min"] == 100.0
    printed = capsys.readouterr().out
    assert "engine 2,000 img/s, bare loop 2,500 img/s, ratio 0.800" in printed and "100.0 min" in printed
