"""``kdbench compare METHOD``: one method against every other on the same cells.

The same statistics as the board (:func:`kdbench.board.stats.difference`): the paired
mean difference over seeds with its 95 % CI and paired t-test p-value (Welch only when
the seeds do not pair; ``test`` says which), Holm-corrected within the family **"METHOD
against every other method in one cell (dataset x pair)"**.
"""
from __future__ import annotations

from typing import Optional, Sequence

from kdbench.board import stats
from kdbench.board.records import CELL, METRICS
from kdbench.board.render.text import PERCENT, fmt, fmt_p

COLUMNS = ["dataset", "teacher", "student", "method", "other", "n", "n_other", "n_pairs", "test", "mean",
           "other_mean", "diff", "ci_lo", "ci_hi", "p_value", "p_holm"]


def compare(runs, method: str, metric: str = "top1", others: Optional[Sequence[str]] = None):
    """Rows sorted by cell, then by difference (largest first). ``mean`` / ``other_mean``
    are over the seeds the test used (the paired seeds when they pair)."""
    import pandas as pd

    from kdbench.errors import UnknownChoiceError

    known = sorted(runs["method"].dropna().unique())
    if method not in known:
        raise UnknownChoiceError("method on the board", method, known,
                                 hint="Add it to the profile's methods and run the pipeline first")
    if metric not in runs.columns:
        raise UnknownChoiceError("metric", metric, [m for m in METRICS if m in runs.columns])
    rows = []
    for cell, g in runs.groupby(CELL, sort=False):
        a = stats.series(g, method, metric)
        if a.empty:
            continue
        block = []
        for other in dict.fromkeys(g["method"]):
            if other == method or (others and other not in others):
                continue
            b = stats.series(g, other, metric)
            if b.empty:
                continue
            d = stats.difference(a, b)
            block.append({"dataset": cell[0], "teacher": cell[1], "student": cell[2], "method": method,
                          "other": other, "n": int(len(a)), "n_other": int(len(b)),
                          "n_pairs": d["n"] if d["test"] == stats.PAIRED else 0, "test": d["test"],
                          "mean": d["a_mean"], "other_mean": d["b_mean"], "diff": d["delta"],
                          "ci_lo": d["ci_lo"], "ci_hi": d["ci_hi"], "p_value": d["p_value"]})
        for r, p in zip(block, stats.holm([r["p_value"] for r in block])):
            r["p_holm"] = p
        rows += block
    out = pd.DataFrame(rows, columns=COLUMNS)
    if not out.empty:
        out["_c"] = out.groupby(CELL, sort=False).ngroup()
        out = out.sort_values(["_c", "diff"], ascending=[True, False], kind="stable").drop(columns="_c")
    return out.reset_index(drop=True)


def format_compare(table, metric: str = "top1", alpha: float = stats.ALPHA) -> str:
    """The compare table as aligned text, one block per cell; * = Holm-corrected p < alpha."""
    if table.empty:
        return "no cell has both the method and another method\n"
    scale, unit = (100.0, " (percentage points)") if metric in PERCENT else (1.0, "")
    method = table["method"].iloc[0]
    lines = [f"{method} vs every other method, {metric}{unit}: paired mean difference over seeds [95 % CI], "
             "paired t-test p (Welch's where the seeds do not pair), Holm-corrected within each cell"]
    wins = losses = 0
    for cell, g in table.groupby(CELL, sort=False):
        lines.append(f"\n{cell[0]}: {cell[1]} -> {cell[2]}   ({method}: n={g['n'].iloc[0]})")
        width = max(len(str(o)) for o in g["other"])
        for _, r in g.iterrows():
            sig = ""
            if not stats.isnan(r["p_holm"]) and r["p_holm"] < alpha:
                sig = " *"
                wins += r["diff"] > 0
                losses += r["diff"] < 0
            ci = ("" if stats.isnan(r["ci_lo"]) else
                  f"[{r['ci_lo'] * scale:+.3f}, {r['ci_hi'] * scale:+.3f}]")
            lines.append(f"  vs {r['other']:<{width}}  diff {r['diff'] * scale:+8.3f} {ci:<20} "
                         f"p {fmt_p(r['p_value']):>8}  p_holm {fmt_p(r['p_holm']):>8}  "
                         f"{r['test'] or 'no test'} ({fmt(r['other_mean'] * scale)}, n={r['n_other']}){sig}")
    lines.append(f"\n* Holm-corrected p < {alpha}: {method} significantly better in {wins}, worse in {losses} "
                 "comparisons")
    return "\n".join(lines) + "\n"
