"""leaderboard_paper.tex: the compact, paper-ready table (one per metric of a chosen set).

Method x cell (dataset x teacher -> student) of the mean over seeds ± the half-width of its
95 % t-interval; methods ordered by their overall mean rank on top-1
(:mod:`kdbench.board.overall`); one ``\\label`` per table (``tab:kdbench-paper-<metric>``).
A cell's best mean is bold **only** where it is significantly better than the runner-up:
the paired test of the two, Holm-corrected in the board's one family
(:func:`kdbench.board.stats.cell_comparisons`), gives p < 0.05 in the right direction; the
caption says so. Needs only ``\\usepackage{booktabs}``; no ``\\resizebox``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from kdbench.board import overall, stats
from kdbench.board.records import CELL
from kdbench.board.render.latex import tex_escape
from kdbench.board.render.text import DASH, PERCENT

NAMES = {"top1": "Top-1", "top1_ood": "OOD top-1", "top1_sel": "Top-1 (selected epoch)", "agreement": "Agreement",
         "ece": "ECE", "nll": "NLL", "expl_sim": "Explanation similarity"}


def _entry(values, metric: str) -> str:
    m, lo, hi = stats.mean_ci(values)
    if stats.isnan(m):
        return DASH
    k = overall.scale(metric)
    digits = 2 if metric in PERCENT else 3
    text = f"{m * k:.{digits}f}"
    return text if stats.isnan(lo) else f"{text} $\\pm$ {(hi - m) * k:.{digits}f}"


def bold_method(g, metric: str, alpha: float = stats.ALPHA) -> Optional[str]:
    """The method of one cell (``g``: its runs) whose mean is bold: the best, when the
    family's Holm-corrected test says it is better than the runner-up; else None."""
    every = stats.series_by_method(g, metric)
    means = {m: float(every[m].mean()) for m in dict.fromkeys(g["method"]) if m in every}
    if len(means) < 2:
        return None
    lower = overall.direction(metric) == "lower"
    ranked = sorted(means, key=lambda m: means[m] if lower else -means[m])
    best, runner = ranked[0], ranked[1]
    d = stats.cell_comparisons(g, metric).get((best, runner))
    return best if stats.outcome(d, overall.direction(metric), alpha) == "win" else None


def _header(cell_list: List[tuple]) -> List[str]:
    """Two header rows: the dataset over its pairs (with a rule), then teacher -> student."""
    top, rules, col = ["Method"], [], 2
    for d in dict.fromkeys(c[0] for c in cell_list):
        span = sum(1 for c in cell_list if c[0] == d)
        top.append(f"\\multicolumn{{{span}}}{{c}}{{{tex_escape(d)}}}")
        rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
        col += span
    pairs = [""] + [f"{tex_escape(t)} $\\rightarrow$ {tex_escape(s)}" for _, t, s in cell_list]
    return [" & ".join(top) + " \\\\", "".join(rules), " & ".join(pairs) + " \\\\"]


def paper_table(runs, metric: str = "top1", order: Optional[Sequence[str]] = None, alpha: float = stats.ALPHA,
                title: str = "kdbench") -> str:
    """One table environment for ``metric`` (module docstring)."""
    groups = list(runs.groupby(CELL, sort=False, dropna=False))
    cell_list = [c for c, _ in groups]
    methods = list(order) if order else list(dict.fromkeys(runs["method"]))
    bold = {c: bold_method(g, metric, alpha) for c, g in groups}
    every = {c: stats.series_by_method(g, metric) for c, g in groups}
    body = []
    for m in methods:
        row = [tex_escape(m)]
        for c, g in groups:
            text = _entry(every[c][m].tolist() if m in every[c] else [], metric)
            row.append(f"\\textbf{{{text}}}" if bold[c] == m else tex_escape(text) if text == DASH else text)
        body.append(" & ".join(row) + " \\\\")
    name = NAMES.get(metric, metric)
    unit = " (\\%)" if metric in PERCENT else ""
    caption = (f"{tex_escape(title)}: {tex_escape(name)}{unit} per method and dataset / teacher $\\rightarrow$ "
               f"student, mean $\\pm$ half-width of the 95\\,\\% $t$-interval over seeds. Bold: the best mean, "
               f"only where it is significantly better than the runner-up (paired $t$-test over seeds, "
               f"Holm-corrected over every pairwise comparison of the cell's methods, $p < {alpha:g}$); no bold: "
               f"the best is not significantly better. Methods in order of their overall mean rank on top-1; "
               f"{tex_escape(DASH)}: not run.")
    return "\n".join(["\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}",
                      f"\\caption{{{caption}}}", f"\\label{{tab:kdbench-paper-{metric.replace('_', '-')}}}",
                      f"\\begin{{tabular}}{{l{'r' * len(cell_list)}}}", "\\toprule", *_header(cell_list),
                      "\\midrule", *body, "\\bottomrule", "\\end{tabular}", "\\end{table}", ""])


def render_paper_latex(runs, metrics: Sequence[str] = ("top1",), alpha: float = stats.ALPHA,
                       title: str = "kdbench") -> str:
    """leaderboard_paper.tex: one :func:`paper_table` per metric (those the runs have)."""
    order = overall.rank_table(runs, "top1")["method"].tolist()
    out = ["% kdbench: compact paper tables, generated by `kdbench leaderboard` (needs \\usepackage{booktabs}).",
           "% \\input{leaderboard_paper.tex}; each table has \\label{tab:kdbench-paper-METRIC}.", ""]
    for metric in dict.fromkeys(metrics):
        if metric in runs.columns and runs[metric].notna().any():
            out.append(paper_table(runs, metric, order, alpha, title))
    return "\n".join(out)
