"""The leaderboard on constructed evaluation records: columns, hand-checked means, stds and
deltas, empty (never 0) metrics that do not apply, the rendered files, and compare's
Welch p-values against scipy."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from scipy import stats

from kdbench import leaderboard as lb

DESIGN_COLUMNS = ["dataset", "teacher", "student", "method", "n_seeds", "top1_mean", "top1_std", "top1_sel_mean",
                  "top1_ood_mean", "agreement_mean", "expl_sim_mean", "epg_mean", "fss_mean", "rs_mean",
                  "delta_vs_kd", "delta_vs_vanilla", "params", "train_s_mean"]

TOP1 = {"vanilla": [0.60, 0.62, 0.64], "kd": [0.70, 0.72, 0.74], "dkd": [0.75, 0.80, 0.85]}


def record(dataset, method, seed, top1, *, ood=True, masks=True):
    """An evaluation record as `kdbench evaluate` writes it."""
    kd_like = method != "vanilla"
    return {
        "dataset": dataset, "teacher": "resnet14", "student": "resnet8", "method": method, "seed": seed,
        "teacher_seed": 0 if kd_like else None, "top1": top1, "top1_sel": top1 - 0.01,
        "top1_ood": (top1 - 0.2) if ood else None, "train_s": 10.0 + seed, "train_img_s": 500.0, "params": 78042,
        "agreement": top1 + 0.1, "agreement_ood": (top1 - 0.1) if ood else None, "expl_sim": 0.5 + seed / 10,
        "epg": (0.4 + seed / 100) if masks else None, "fss": 0.7, "fss_stages": [0.6, 0.7, 0.8],
        "rs": 0.1 * (seed + 1) if kd_like else None, "rs_residual": 0.05 if kd_like else None,
        "unicam_epg_distilled": (0.6 if masks else None) if kd_like else None,
        "unicam_epg_residual": (0.3 if masks else None) if kd_like else None,
        "decision_consistency": 0.8, "hierarchy_ari": 1.0, "flops": 1.2e7, "eval_s": 3.0,
    }


def records():
    out = []
    for method, accs in TOP1.items():
        for seed, acc in enumerate(accs):
            out.append(record("shapes", method, seed, acc))
            # a second dataset without OOD split and without masks, only two methods, 2 seeds
            if method != "dkd" and seed < 2:
                out.append(record("plain", method, seed, acc - 0.1, ood=False, masks=False))
    return out


@pytest.fixture(scope="module")
def runs():
    return lb.runs_frame(records())


@pytest.fixture(scope="module")
def board(runs):
    return lb.aggregate(runs, datasets=["shapes", "plain"])


def row(board, dataset, method):
    r = board[(board["dataset"] == dataset) & (board["method"] == method)]
    assert len(r) == 1
    return r.iloc[0]


def test_columns(runs, board):
    for col in DESIGN_COLUMNS:
        assert col in board.columns, col
    for col in ["dataset", "teacher", "student", "method", "seed", "top1", "top1_sel", "top1_ood", "agreement",
                "expl_sim", "epg", "fss", "rs", "train_s", "params", "fss_stages"]:
        assert col in runs.columns, col
    assert len(runs) == 9 + 4
    assert len(board) == 3 + 2


def test_means_stds_deltas(board):
    dkd, kd, van = (row(board, "shapes", m) for m in ("dkd", "kd", "vanilla"))
    assert dkd["n_seeds"] == 3
    assert dkd["top1_mean"] == pytest.approx(0.80)
    assert dkd["top1_std"] == pytest.approx(0.05)          # sample std over seeds (ddof=1)
    assert kd["top1_std"] == pytest.approx(0.02)
    assert dkd["top1_sel_mean"] == pytest.approx(0.79)
    assert dkd["top1_ood_mean"] == pytest.approx(0.60)
    assert dkd["agreement_mean"] == pytest.approx(0.90)
    assert dkd["expl_sim_mean"] == pytest.approx(0.6)
    assert dkd["epg_mean"] == pytest.approx(0.41)
    assert dkd["rs_mean"] == pytest.approx(0.2)
    assert dkd["train_s_mean"] == pytest.approx(11.0)
    assert dkd["params"] == 78042
    assert dkd["delta_vs_kd"] == pytest.approx(0.08)
    assert dkd["delta_vs_vanilla"] == pytest.approx(0.18)
    assert kd["delta_vs_vanilla"] == pytest.approx(0.10)
    assert kd["delta_vs_kd"] == pytest.approx(0.0)
    assert van["delta_vs_vanilla"] == pytest.approx(0.0)
    # best first within the cell
    shapes = board[board["dataset"] == "shapes"]
    assert list(shapes["method"]) == ["dkd", "kd", "vanilla"]
    assert list(shapes["rank"]) == [1, 2, 3]
    assert list(board["dataset"]) == ["shapes"] * 3 + ["plain"] * 2


def test_not_applicable_is_empty_never_zero(board, tmp_path, runs):
    van = row(board, "shapes", "vanilla")
    assert math.isnan(van["rs_mean"])                      # vanilla has no distilled features
    plain_kd = row(board, "plain", "kd")
    assert plain_kd["n_seeds"] == 2
    assert plain_kd["top1_mean"] == pytest.approx(0.61)
    for col in ("top1_ood_mean", "epg_mean", "unicam_epg_distilled_mean", "agreement_ood_mean"):
        assert math.isnan(plain_kd[col]), col
    assert math.isnan(row(board, "plain", "vanilla")["delta_vs_kd"]) is False
    paths = lb.write_board(runs, tmp_path, figures=False)
    text = paths["board"].read_text().splitlines()
    header = text[0].split(",")
    plain = [line.split(",") for line in text[1:] if line.startswith("plain,")]
    for line in plain:
        cells = dict(zip(header, line))
        assert cells["top1_ood_mean"] == "" and cells["epg_mean"] == ""
        assert cells["top1_mean"] not in ("", "0")
    back = pd.read_csv(paths["board"])
    assert back["top1_ood_mean"].isna().sum() == 2
    assert (back["top1_ood_mean"].fillna(1) != 0).all()


def test_delta_empty_without_baseline():
    recs = [record("shapes", "dkd", s, 0.7 + s / 100) for s in range(2)]
    board = lb.aggregate(lb.runs_frame(recs))
    assert math.isnan(board.iloc[0]["delta_vs_kd"]) and math.isnan(board.iloc[0]["delta_vs_vanilla"])
    assert board.iloc[0]["top1_std"] == pytest.approx(math.sqrt(0.5) / 100)


def test_single_seed_std_is_empty():
    board = lb.aggregate(lb.runs_frame([record("shapes", "kd", 0, 0.7)]))
    assert board.iloc[0]["n_seeds"] == 1 and math.isnan(board.iloc[0]["top1_std"])


def test_files_written(runs, tmp_path):
    paths = lb.write_board(runs, tmp_path, profile={"description": "unit test board",
                                                    "datasets": {"shapes": {}, "plain": {}}}, figures=True)
    for key, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, key
        assert path.stat().st_mode & 0o044 == 0o044, key      # readable by others (not mkstemp's 0600)
    md = paths["md"].read_text()
    assert "## shapes" in md and "## plain" in md and "### resnet14 → resnet8" in md
    assert "**80.00 ± 5.00**" in md and "+8.00" in md and "| – |" in md
    tex = paths["tex"].read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "80.00 $\\pm$ 5.00" in tex
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page and 'class="sortable"' in page
    assert 'id="ds-shapes"' in page and 'id="ds-plain"' in page and 'id="claims"' in page
    assert "data:image/png;base64," in page                  # self-contained: figures inline
    assert "http://" not in page and "https://" not in page  # nothing fetched
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["shapes"]["resnet14__resnet8"]["dkd"]["top1_mean"] == pytest.approx(0.8)
    assert metrics["shapes"]["resnet14__resnet8"]["dkd"]["delta_vs_kd"] == pytest.approx(0.08)
    assert "top1_ood_mean" not in metrics["plain"]["resnet14__resnet8"]["kd"]   # NaN left out, not 0
    claims = pd.read_csv(paths["claims"])
    assert list(claims.columns)[:4] == ["claim", "paper", "method", "baseline"]
    runs_back = pd.read_csv(paths["runs"])
    assert json.loads(runs_back["fss_stages"].iloc[0]) == [0.6, 0.7, 0.8]


def test_compare_welch_matches_scipy(runs):
    table = lb.compare(runs, "dkd")
    assert set(table["other"]) == {"kd", "vanilla"}
    for _, r in table.iterrows():
        a, b = TOP1["dkd"], TOP1[r["other"]]
        assert r["diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
        assert r["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert list(table["other"]) == ["vanilla", "kd"]        # largest difference first
    text = lb.format_compare(table)
    assert "vs vanilla" in text and "+18.000" in text

    # another metric, and a cell where the method is missing (plain has no dkd) is skipped
    t2 = lb.compare(runs, "kd", metric="expl_sim", others=["vanilla"])
    assert list(t2["dataset"]) == ["shapes", "plain"]
    assert t2["diff"].abs().max() < 1e-12
    with pytest.raises(Exception, match="did you mean 'dkd'"):
        lb.compare(runs, "dk")


def test_compare_one_seed_has_no_p_value():
    runs = lb.runs_frame([record("shapes", "kd", 0, 0.7), record("shapes", "vanilla", 0, 0.6),
                          record("shapes", "vanilla", 1, 0.62)])
    t = lb.compare(runs, "kd")
    assert math.isnan(t.iloc[0]["p_value"]) and t.iloc[0]["diff"] == pytest.approx(0.09)


def test_cli_leaderboard_and_compare(tmp_path, capsys, monkeypatch):
    """`kdbench leaderboard` reads the profile's eval files (+ run and teacher metrics)."""
    from kdbench.cli import main

    results = tmp_path / "results"
    profile = {
        "results_dir": str(results),
        "datasets": {"shapes": {"image_size": 16, "n_train": 64, "n_val": 16, "n_test": 16, "n_test_ood": 16}},
        "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
        "methods": ["vanilla", "kd", "dkd"], "seeds": [0, 1, 2],
        "teacher_train": {"epochs": 1}, "student_train": {"epochs": 1},
        "tracking": {"enabled": False},
    }
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(profile))
    for method, accs in TOP1.items():
        for seed, acc in enumerate(accs):
            rec = record("shapes", method, seed, acc)
            ev = results / "evals" / "shapes" / "resnet14__resnet8" / method / f"s{seed}.json"
            ev.parent.mkdir(parents=True, exist_ok=True)
            ev.write_text(json.dumps(rec))
            sdir = results / "students" / "shapes" / "resnet14__resnet8" / method / f"s{seed}"
            sdir.mkdir(parents=True)
            (sdir / "metrics.json").write_text(json.dumps({"epochs": 1, "best_epoch": 1, "config_hash": f"h{seed}"}))
    tdir = results / "teachers" / "shapes" / "resnet14" / "s0"
    tdir.mkdir(parents=True)
    (tdir / "metrics.json").write_text(json.dumps({"top1": 0.9}))

    assert main(["leaderboard", "--params", str(params), "--no-figures"]) == 0
    board = pd.read_csv(results / "leaderboard" / "leaderboard.csv")
    assert board["teacher_top1_mean"].tolist() == pytest.approx([0.9, 0.9, 0.9])
    runs = pd.read_csv(results / "leaderboard" / "runs.csv")
    assert sorted(runs["config_hash"].unique()) == ["h0", "h1", "h2"]

    capsys.readouterr()
    assert main(["compare", "dkd", "--params", str(params), "--format", "csv"]) == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert out.loc[out["other"] == "kd", "p_value"].iloc[0] == pytest.approx(
        stats.ttest_ind(TOP1["dkd"], TOP1["kd"], equal_var=False).pvalue)
    assert main(["compare", "nope", "--runs", str(results / "leaderboard" / "runs.csv")]) == 2
    assert "unknown method on the board 'nope'" in capsys.readouterr().err
