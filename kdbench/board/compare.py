"""``kdbench compare METHOD``: one method against every other on the same cells.

The same statistics as the board (:func:`kdbench.board.stats.difference`): the paired
mean difference over seeds with its 95 % CI and paired t-test p-value (Welch only when
the seeds do not pair; ``test`` says which), Holm-corrected within the board's one family
(:func:`kdbench.board.stats.cell_comparisons`: every pairwise comparison between two
student methods of the cell, on the metric compared), so a comparison's p_holm is the one
the board shows, whatever ``--vs`` selects. The report ends with the overall summary
(:func:`summary`, :mod:`kdbench.board.overall`): METHOD's mean rank over the cells with
its bootstrap interval, and wins / ties / losses against every other method.
A comparison whose two methods' runs ran under more than one provenance (device kind,
torch build: :mod:`kdbench.board.provenance`) says so (``provenance_note``, and a line
under it in the text). ``top1_best_test`` is refused as the metric: it is the like-for-like
yardstick for papers that select on the test split, never a ranking metric.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from kdbench.board import overall, provenance, stats
from kdbench.board.hparams_mix import compare_warning
from kdbench.board.records import CELL, METRICS
from kdbench.board.render.text import PERCENT, fmt, fmt_p
from kdbench.errors import UnknownChoiceError

COLUMNS = ["dataset", "teacher", "student", "method", "other", "n", "n_other", "n_pairs", "test", "mean",
           "other_mean", "diff", "ci_lo", "ci_hi", "p_value", "p_holm", "provenance_note"]
#: the summary's columns (``--format csv`` / ``json``: after the per-cell rows, ``scope`` = overall)
#: recorded for the reproduction scorecard only: never compared or ranked
NOT_RANKED = "top1_best_test"
SUMMARY_COLUMNS = ["method", "other", "metric", "n_cells", "mean_rank", "rank_ci_lo", "rank_ci_hi", "wins", "ties",
                   "losses"]


def _check(runs, method: str, metric: str, source: Optional[str]) -> None:
    known = sorted(runs["method"].dropna().unique())
    if method not in known:
        where = f"These are the runs of {source}. " if source else ""
        raise UnknownChoiceError("method on the board", method, known,
                                 hint=f"{where}Pass the profile whose board ran it (--params PROFILE.yaml) or "
                                      "that board's runs.csv (--runs), or add it to this profile's methods and "
                                      "run the pipeline first")
    if metric not in runs.columns or metric == NOT_RANKED:
        raise UnknownChoiceError("metric", metric, [m for m in METRICS if m in runs.columns and m != NOT_RANKED],
                                 hint=f"{NOT_RANKED} is the like-for-like yardstick for papers that select on the "
                                      f"test split (the reproduction scorecard), never a ranking metric"
                                      if metric == NOT_RANKED else "")


def compare(runs, method: str, metric: str = "top1", others: Optional[Sequence[str]] = None,
            source: Optional[str] = None):
    """Rows sorted by cell, then by difference (largest first). ``mean`` / ``other_mean``
    are over the seeds the test used (the paired seeds when they pair). ``source``: where
    the runs come from (the profile), named in the error for a method not on the board."""
    import pandas as pd

    _check(runs, method, metric, source)
    rows = []
    for cell, g in runs.groupby(CELL, sort=False):
        family = stats.cell_comparisons(g, metric)
        a = stats.series(g, method, metric)
        for other in dict.fromkeys(g["method"]):
            d = family.get((method, other))
            if d is None or (others and other not in others):
                continue
            rows.append({"dataset": cell[0], "teacher": cell[1], "student": cell[2], "method": method,
                         "other": other, "n": int(len(a)), "n_other": d["n_b"],
                         "n_pairs": d["n"] if d["test"] == stats.PAIRED else 0, "test": d["test"],
                         "mean": d["a_mean"], "other_mean": d["b_mean"], "diff": d["delta"],
                         "ci_lo": d["ci_lo"], "ci_hi": d["ci_hi"], "p_value": d["p_value"], "p_holm": d["p_holm"],
                         "provenance_note": provenance.pair_note(g, method, other)})
    out = pd.DataFrame(rows, columns=COLUMNS)
    if not out.empty:
        out["_c"] = out.groupby(CELL, sort=False).ngroup()
        out = out.sort_values(["_c", "diff"], ascending=[True, False], kind="stable").drop(columns="_c")
    return out.reset_index(drop=True)


def summary(runs, method: str, metric: str = "top1", others: Optional[Sequence[str]] = None,
            alpha: float = stats.ALPHA):
    """The report's closing block: one row with ``other`` empty (METHOD's mean rank on
    ``metric`` over the cells it ran in, with its bootstrap 95 % interval and ``n_cells``),
    then one row per other method (``wins`` / ``ties`` / ``losses`` over the cells both ran
    in, each decided by the family's Holm p < ``alpha``), most wins first."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    _check(runs, method, metric, None)
    ranks = overall.rank_table(runs, metric).set_index("method")
    r = ranks.loc[method]
    rows = [{"method": method, "other": "", "metric": metric, "n_cells": int(r["n_cells"]),
             "mean_rank": r["mean_rank"], "rank_ci_lo": r["rank_ci_lo"], "rank_ci_hi": r["rank_ci_hi"],
             "wins": math.nan, "ties": math.nan, "losses": math.nan}]
    counts = overall.outcomes(overall.families(runs, metric), method, others, metric, alpha)
    block = [{"method": method, "other": o, "metric": metric, "n_cells": c["n_cells"], "mean_rank": math.nan,
              "rank_ci_lo": math.nan, "rank_ci_hi": math.nan, "wins": c["wins"], "ties": c["ties"],
              "losses": c["losses"]} for o, c in counts.items()]
    block.sort(key=lambda x: (-x["wins"] + x["losses"], -x["wins"], x["other"]))
    out = pd.DataFrame(rows + block, columns=SUMMARY_COLUMNS)
    for c in ("wins", "ties", "losses"):
        out[c] = out[c].astype("Int64")
    return out


def data_frame(table, summ):
    """``--format csv`` / ``json``: the per-cell rows (``scope`` = cell), then the summary
    rows (``scope`` = overall), in one table."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    cells = table.assign(scope="cell")
    tail = summ.assign(scope="overall")
    cols = ["scope"] + COLUMNS + [c for c in SUMMARY_COLUMNS if c not in COLUMNS]
    return pd.concat([cells, tail], ignore_index=True).reindex(columns=cols)


def report(runs, method: str, metric: str = "top1", others: Optional[Sequence[str]] = None,
           fmt_name: str = "table", alpha: float = stats.ALPHA, source: Optional[str] = None) -> str:
    """What ``kdbench compare`` prints: the per-cell comparisons, then the summary block;
    the table starts with the tuned-vs-untuned warning where there is one
    (:func:`kdbench.board.hparams_mix.compare_warning`; csv / json: the command puts it on stderr)."""
    table = compare(runs, method, metric, others, source=source)
    summ = summary(runs, method, metric, others, alpha)
    if fmt_name == "csv":
        return data_frame(table, summ).to_csv(index=False, float_format="%.6g", na_rep="")
    if fmt_name == "json":
        return data_frame(table, summ).to_json(orient="records", indent=2) + "\n"
    warning = compare_warning(runs, method, others)
    return (warning + "\n\n" if warning else "") + format_compare(table, metric, alpha, others=others, summ=summ)


def format_compare(table, metric: str = "top1", alpha: float = stats.ALPHA, *,
                   others: Optional[Sequence[str]] = None, summ=None) -> str:
    """The compare table as aligned text, one block per cell (METHOD's mean and the other's,
    each labelled); * = Holm-corrected p < alpha; then the summary block (:func:`summary`)."""
    if table.empty:
        return "no cell has both the method and another method\n"
    scale, unit = (100.0, " (percentage points)") if metric in PERCENT else (1.0, "")
    method = table["method"].iloc[0]
    against = ", ".join(others) if others else "every other method"
    lines = [f"{method} vs {against}, {metric}{unit}: paired mean difference over seeds [95 % CI], "
             f"paired t-test p (Welch's where the seeds do not pair), {stats.FAMILY_NOTE}"]
    for cell, g in table.groupby(CELL, sort=False):
        lines.append(f"\n{cell[0]}: {cell[1]} -> {cell[2]}   ({method}: n={g['n'].iloc[0]} seeds)")
        width = max(len(str(o)) for o in g["other"])
        for _, r in g.iterrows():
            sig = " *" if not stats.isnan(r["p_holm"]) and r["p_holm"] < alpha else ""
            ci = ("" if stats.isnan(r["ci_lo"]) else
                  f"[{r['ci_lo'] * scale:+.3f}, {r['ci_hi'] * scale:+.3f}]")
            lines.append(f"  vs {r['other']:<{width}}  diff {r['diff'] * scale:+8.3f} {ci:<20} "
                         f"p {fmt_p(r['p_value']):>8}  p_holm {fmt_p(r['p_holm']):>8}  "
                         f"{r['test'] or 'no test'}  {method} mean {fmt(r['mean'] * scale)}, {r['other']} mean "
                         f"{fmt(r['other_mean'] * scale)} (n={r['n_other']}){sig}")
            if isinstance(r.get("provenance_note"), str) and r["provenance_note"]:
                lines.append(f"      warning: {r['provenance_note']}")
    lines.append(f"\n* Holm-corrected p < {alpha}")
    if summ is not None and len(summ):
        lines += ["", summary_text(summ, alpha)]
    return "\n".join(lines) + "\n"


def summary_text(summ, alpha: float = stats.ALPHA) -> str:
    """The summary block as text: the overall rank line, then W/T/L per other method."""
    head = summ.iloc[0]
    method, metric = head["method"], head["metric"]
    lines = [f"Overall ({metric}, over the {int(head['n_cells'])} cell(s) {method} ran in): mean rank "
             f"{head['mean_rank']:.2f} [95 % bootstrap interval {head['rank_ci_lo']:.2f}, {head['rank_ci_hi']:.2f}] "
             f"(rank within each cell by the mean over seeds, 1 = best; the interval resamples seeds within cells, "
             f"{overall.N_BOOT} replicates)",
             f"wins / ties / losses of {method} (Holm-corrected p < {alpha} in a cell = a win or a loss):"]
    rest = summ.iloc[1:]
    if rest.empty:
        return "\n".join(lines + ["  no other method shares a cell with it"])
    width = max(len(str(o)) for o in rest["other"])
    for _, r in rest.iterrows():
        lines.append(f"  vs {r['other']:<{width}}  {int(r['wins'])} / {int(r['ties'])} / {int(r['losses'])}"
                     f"   ({int(r['n_cells'])} cell(s))")
    return "\n".join(lines)
