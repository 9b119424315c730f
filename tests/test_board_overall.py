"""The overall view across cells (issue 24): mean rank with its seed bootstrap, wins / ties /
losses by the board's one Holm family, excluded cells, the performance profile, the
`kdbench compare` summary, and the compact paper table. Hand-built boards, seconds."""
from __future__ import annotations

import math
import shutil
import subprocess
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdbench.board import compare as bcompare
from kdbench.board import overall
from kdbench.board import stats as bstats
from kdbench.board.aggregate import aggregate
from kdbench.board.records import runs_frame
from kdbench.board.render.html import html_table
from kdbench.board.render.paper import render_paper_latex
from kdbench.board.render.text import columns_for
from kdbench.board.write import write_board


def make_runs(spec, metric: str = "top1"):
    """runs.csv from {(dataset, teacher, student): {method: [value of seed 0, 1, ...]}}."""
    recs = []
    for (d, t, s), methods in spec.items():
        for m, values in methods.items():
            for seed, v in enumerate(values):
                recs.append({"dataset": d, "teacher": t, "student": s, "method": m, "seed": seed, metric: v})
    return runs_frame(recs)


def noisy(rng, centre, n=3, sd=0.01):
    return list(np.round(centre + rng.normal(0, sd, n), 4))


def test_a_method_that_wins_every_cell_ranks_first_with_a_tight_interval():
    rng = np.random.default_rng(1)
    spec = {(d, "t", "s"): {"vanilla": noisy(rng, 0.50), "kd": noisy(rng, 0.52), "other": noisy(rng, 0.51),
                             "star": noisy(rng, 0.80)} for d in ("a", "b", "c", "e")}
    table = overall.rank_table(make_runs(spec)).set_index("method")
    assert table.loc["star", "mean_rank"] == 1.0
    assert (table.loc["star", "rank_ci_lo"], table.loc["star", "rank_ci_hi"]) == (1.0, 1.0)
    assert table.loc["star", "n_cells"] == 4 and table.loc["star", "n_best"] == 4
    assert table.index[0] == "star" and (table.drop("star")["rank_ci_lo"] >= 2.0).all()
    # the others are close to each other (1 point apart, 1 point of noise): wider intervals
    assert (table.drop("star")["rank_ci_hi"] - table.drop("star")["rank_ci_lo"]).max() > 0


def test_two_identical_methods_share_a_rank():
    rng = np.random.default_rng(2)
    spec = {}
    for d in ("a", "b"):
        twin = noisy(rng, 0.70, sd=0.02)
        spec[(d, "t", "s")] = {"kd": noisy(rng, 0.65, sd=0.02), "twin_a": twin, "twin_b": list(twin),
                               "vanilla": noisy(rng, 0.60, sd=0.02)}
    table = overall.rank_table(make_runs(spec)).set_index("method")
    a, b = table.loc["twin_a"], table.loc["twin_b"]
    assert a["mean_rank"] == b["mean_rank"] == 1.5      # ties share the average rank
    assert (a["rank_ci_lo"], a["rank_ci_hi"]) == (b["rank_ci_lo"], b["rank_ci_hi"])
    assert a["n_best"] == b["n_best"] == 2


def test_the_bootstrap_resamples_seeds_within_cells_with_a_fixed_seed():
    """One cell, 2 methods, 2 seeds where A wins on seed 0 and B on seed 1: the draws
    {0,0} / {1,1} / {0,1} rank A 1 / 2 / by the mean; the interval spans 1..2, and the same
    RNG seed gives the same interval."""
    runs = make_runs({("a", "t", "s"): {"A": [0.9, 0.5], "B": [0.6, 0.7]}})
    t1, t2 = overall.rank_table(runs), overall.rank_table(runs)
    pd.testing.assert_frame_equal(t1, t2)
    a = t1.set_index("method").loc["A"]
    assert a["mean_rank"] == 1.0 and (a["rank_ci_lo"], a["rank_ci_hi"]) == (1.0, 2.0)


def test_excluded_cells_are_not_counted_against_a_method():
    rng = np.random.default_rng(3)
    profile = {"methods": ["vanilla", "kd", "heavy"],
               "pairs": [{"teacher": "t", "student": "s"}, {"teacher": "t", "student": "tiny", "exclude_methods": ["heavy"]}]}
    spec = {("a", "t", "s"): {"vanilla": noisy(rng, 0.5), "kd": noisy(rng, 0.6), "heavy": noisy(rng, 0.9)},
            ("a", "t", "tiny"): {"vanilla": noisy(rng, 0.4), "kd": noisy(rng, 0.45)}}
    runs = make_runs(spec)
    table = overall.overall_table(runs, profile).set_index("method")
    heavy = table.loc["heavy"]
    assert (heavy["n_cells"], heavy["n_cells_board"], heavy["n_excluded"]) == (1, 2, 1)
    assert heavy["mean_rank"] == 1.0                                   # not ranked last in the cell it skipped
    assert heavy[["wins_vs_kd", "ties_vs_kd", "losses_vs_kd"]].sum() == 1
    assert table.loc["kd", "n_cells"] == 2 and table.loc["kd", "n_excluded"] == 0
    prof = overall.performance_profile(runs)
    assert prof[(prof["method"] == "heavy")]["fraction"].min() == 1.0  # best in its one cell: never a miss
    from kdbench.board.render.text import overall_frame

    assert overall_frame(table.reset_index()).set_index("Method").loc["heavy", "Cells"] == "1 of 2 (1 excluded)"


def test_performance_profile_hand_computed():
    # cell 1: A 80, B 78, C 70 -> gaps 0, 2, 10; cell 2: A 60, B 65, C 64 -> gaps 5, 0, 1
    runs = make_runs({("c1", "t", "s"): {"A": [0.80], "B": [0.78], "C": [0.70]},
                      ("c2", "t", "s"): {"A": [0.60], "B": [0.65], "C": [0.64]}})
    prof = overall.performance_profile(runs)
    steps = sorted(set(prof["delta"]))
    assert steps == pytest.approx([0, 1, 2, 5, 10])
    want = {"A": [0.5, 0.5, 0.5, 1, 1], "B": [0.5, 0.5, 1, 1, 1], "C": [0, 0.5, 0.5, 0.5, 1]}
    for m, fractions in want.items():
        assert prof[prof["method"] == m].sort_values("delta")["fraction"].tolist() == fractions, m
    # lower is better (ECE, not in points): cell 1: 0.02 best, 0.05 -> gap 0.03
    ece = overall.performance_profile(make_runs({("c1", "t", "s"): {"A": [0.02], "B": [0.05]}}, "ece"), "ece")
    assert ece[ece["method"] == "B"].sort_values("delta")["fraction"].tolist() == [0, 1]
    assert ece["delta"].max() == pytest.approx(0.03)


def _cell_runs():
    """One cell, four methods, 4 seeds: star well ahead, the rest close."""
    return make_runs({("a", "t", "s"): {"vanilla": [0.50, 0.51, 0.54, 0.52], "kd": [0.63, 0.62, 0.66, 0.64],
                                         "dkd": [0.64, 0.66, 0.65, 0.69], "star": [0.80, 0.83, 0.81, 0.84]}})


def test_compare_and_the_board_use_one_holm_family():
    runs = _cell_runs()
    names = ["vanilla", "kd", "dkd", "star"]
    series = {m: runs[runs["method"] == m].sort_values("seed")["top1"].to_numpy() for m in names}
    pairs = list(combinations(names, 2))
    raw = [stats.ttest_rel(series[a], series[b]).pvalue for a, b in pairs]
    holm = dict(zip(pairs, bstats.holm(raw)))           # the family: all 6 pairwise comparisons
    board = aggregate(runs).set_index("method")
    for a in ("dkd", "star"):
        want = holm[("kd", a)]
        assert board.loc[a, "delta_vs_kd_p_holm"] == pytest.approx(want)
        for others in (None, ["kd"]):                  # --vs does not change the family
            t = bcompare.compare(runs, a, others=others)
            assert t.loc[t["other"] == "kd", "p_holm"].iloc[0] == pytest.approx(want)
    assert board.loc["vanilla", "delta_vs_kd_p_holm"] == pytest.approx(holm[("vanilla", "kd")])
    assert board.loc["star", "delta_vs_vanilla_p_holm"] == pytest.approx(holm[("vanilla", "star")])


def test_compare_ends_with_the_summary_block():
    runs = _cell_runs()
    summ = bcompare.summary(runs, "star")
    head = summ.iloc[0]
    assert head["other"] == "" and head["mean_rank"] == 1.0 and (head["rank_ci_lo"], head["rank_ci_hi"]) == (1, 1)
    wtl = summ.iloc[1:].set_index("other")
    assert set(wtl.index) == {"vanilla", "kd", "dkd"}
    fam = bstats.cell_comparisons(runs, "top1")
    for o, r in wtl.iterrows():
        assert (r["wins"], r["ties"], r["losses"]) == {"win": (1, 0, 0), "tie": (0, 1, 0), "loss": (0, 0, 1)}[
            bstats.outcome(fam[("star", o)])]
    text = bcompare.report(runs, "kd", others=["vanilla"])
    assert text.startswith("kd vs vanilla, top1") and "kd mean 63.750, vanilla mean 51.750" in text
    assert "Overall (top1, over the 1 cell(s) kd ran in): mean rank 3.00" in text and "vs vanilla  1 / 0 / 0" in text
    csv = pd.read_csv(__import__("io").StringIO(bcompare.report(runs, "star", fmt_name="csv")))
    assert list(csv["scope"]) == ["cell"] * 3 + ["overall"] * 4
    assert csv[csv["scope"] == "overall"]["mean_rank"].iloc[0] == 1.0
    with pytest.raises(Exception, match=r"--params"):
        bcompare.report(runs, "mine", source="params/default.yaml")


def _tds(page, method):
    """The <td ...> opening tags of a method's row (column order: method, n, top-1, Δ KD, ...)."""
    import re

    row = page[page.index(f">{method}<"):]
    return re.findall(r"<td[^>]*>", "<td>" + row[:row.index("</tr>")])


def test_delta_is_coloured_by_verdict_not_sign():
    runs = _cell_runs()
    board = aggregate(runs).set_index("method")
    page = html_table(board.reset_index(), columns_for(board))
    delta_kd, delta_vanilla = 3, 5
    assert board.loc["star", "delta_vs_kd_p_holm"] < 0.05 and 'class="pos"' in _tds(page, "star")[delta_kd]
    assert board.loc["dkd", "delta_vs_kd"] > 0 and board.loc["dkd", "delta_vs_kd_p_holm"] >= 0.05
    assert 'class="ns"' in _tds(page, "dkd")[delta_kd]      # positive, not significant: grey, not green
    assert board.loc["vanilla", "delta_vs_kd"] < 0 and board.loc["vanilla", "delta_vs_kd_p_holm"] < 0.05
    assert 'class="neg"' in _tds(page, "vanilla")[delta_kd]
    assert 'class="pos"' in _tds(page, "dkd")[delta_vanilla]


def test_method_colours_are_one_per_method_across_figures():
    from kdbench import plots

    colours = plots.method_colours(["vanilla", "kd", "dkd", "star"])
    assert plots._palette(["kd", "star"], colours) == {"kd": colours["kd"], "star": colours["star"]}
    assert plots._palette(["teacher", "kd"], colours)["kd"] == colours["kd"]   # the teacher shifts nothing


def paper_runs():
    """Cell a: star far ahead on every seed (bold); cell b: two methods within noise (no bold)."""
    return make_runs({("a", "t", "s"): {"kd": [0.60, 0.62, 0.61, 0.63], "star": [0.80, 0.83, 0.81, 0.84],
                                         "vanilla": [0.55, 0.56, 0.58, 0.55]},
                      ("b", "t", "s"): {"kd": [0.70, 0.75, 0.71, 0.74], "star": [0.72, 0.71, 0.76, 0.73],
                                         "vanilla": [0.60, 0.61, 0.62, 0.60]}})


def test_the_compact_paper_table():
    tex = render_paper_latex(paper_runs(), ("top1",), title="unit")
    assert "\\label{tab:kdbench-paper-top1}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\resizebox" not in tex
    assert tex.count("\\textbf{") == 1
    star = next(line for line in tex.splitlines() if line.startswith("star &"))
    cells = star.rstrip(" \\").split(" & ")
    mean, lo, hi = bstats.mean_ci([0.80, 0.83, 0.81, 0.84])
    assert cells[1] == f"\\textbf{{{mean * 100:.2f} $\\pm$ {(hi - mean) * 100:.2f}}}"
    assert "textbf" not in cells[2]                     # b: the best is not significantly ahead
    assert "significantly better than the runner-up" in tex
    assert star == tex.splitlines()[[i for i, l in enumerate(tex.splitlines()) if l == "\\midrule"][0] + 1]


def _has_booktabs() -> bool:
    if not shutil.which("pdflatex") or not shutil.which("kpsewhich"):
        return False
    return bool(subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True).stdout.strip())


@pytest.mark.skipif(not _has_booktabs(), reason="no pdflatex with booktabs (Debian: apt-get install -y "
                                                "texlive-latex-base texlive-latex-recommended)")
def test_the_paper_and_board_tables_compile_with_pdflatex(tmp_path):
    paths = write_board(paper_runs(), tmp_path, figures=False, published_dir=tmp_path / "none")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}"
                   "\\input{leaderboard_paper.tex}\\input{leaderboard.tex}"
                   "Table~\\ref{tab:kdbench-paper-top1}, \\ref{tab:kdbench-overall}.\\end{document}\n")
    assert paths["paper_tex"].is_file()
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_the_overall_view_in_every_format(tmp_path):
    paths = write_board(paper_runs(), tmp_path, figures=False, published_dir=tmp_path / "none", metric="top1")
    table = pd.read_csv(paths["overall"])
    assert table["method"].tolist()[0] == "star" and table.columns.tolist() == overall.COLUMNS
    assert math.isnan(table.set_index("method").loc["kd", "wins_vs_kd"])
    md = paths["md"].read_text()
    assert md.index("## Overall") < md.index("## a") and "| star " in md
    assert "\\label{tab:kdbench-overall}" in paths["tex"].read_text()
    page = paths["html"].read_text()
    assert page.index('id="claims"') < page.index('id="overall"') < page.index('id="ds-a"')
    assert set(pd.read_csv(paths["profile"])["metric"]) == {"top1"}


def test_leaderboard_metric_is_checked_before_any_work(tmp_path):
    """`kdbench leaderboard --metric` (the profile's second metric): a bad name is one
    error naming the valid ones, before any run is read."""
    from kdbench.board import build
    from kdbench.errors import UnknownChoiceError

    with pytest.raises(UnknownChoiceError, match=r"unknown metric 'agreemnt' \(did you mean 'agreement'\?\)"):
        build({"results_dir": str(tmp_path / "nothing-here")}, metric="agreemnt")
