"""How a board cell reads: the displayed columns and their formatting, shared by every
renderer (Markdown, LaTeX, HTML). Accuracies and deltas in % / points; "–" = does not apply."""
from __future__ import annotations

import json
import math
from typing import List, Tuple

from kdbench.board.hparams_mix import mixed_note
from kdbench.board.stats import isnan

DASH = "–"
#: accuracy-like columns: fractions in the CSVs, % in the rendered tables
PERCENT = {"top1", "top1_sel", "top1_ood", "agreement", "agreement_ood", "teacher_top1"}

#: what the rendered tables show: (column, header, kind)
DISPLAY: List[Tuple[str, str, str]] = [
    ("method", "Method", "text"),
    ("n_seeds", "n", "int"),
    ("top1", "Top-1 %", "meanstd"),
    ("delta_vs_kd", "Δ KD [95 % CI]", "deltaci"),
    ("delta_vs_kd_p_holm", "p KD", "p"),
    ("delta_vs_vanilla", "Δ vanilla [95 % CI]", "deltaci"),
    ("delta_vs_vanilla_p_holm", "p van.", "p"),
    ("top1_sel_mean", "Sel %", "pct"),
    ("top1_ood_mean", "OOD %", "pct"),
    ("agreement_mean", "Agree %", "pct"),
    ("expl_sim_mean", "Expl sim", "num"),
    ("epg_mean", "EPG", "num"),
    ("fss_mean", "FSS", "num"),
    ("rs_mean", "RS", "num"),
    ("decision_consistency_mean", "Dec. cons.", "num"),
    ("ece_mean", "ECE", "num"),
    ("nll_mean", "NLL", "num"),
    ("params", "Params (M)", "mparams"),
    ("train_s_mean", "Train s", "sec"),
    ("hparams", "Hyperparameters (source)", "hparams"),
]
#: added when a published value exists for some row of the board
PUBLISHED_DISPLAY: List[Tuple[str, str, str]] = [
    ("published_top1", "Published %", "pct"),
    ("delta_vs_published", "Δ published [our 95 % CI]", "deltaci"),
]

NOTES = ("Mean ± std over seeds (sample std); accuracies in %. Δ KD / Δ vanilla: the paired top-1 difference "
         "in points against kd / vanilla on the same dataset and pair (same seed = same data order and "
         "initialisation), with its paired 95 % t-interval over seeds; p KD / p van.: the paired t-test's p-value, "
         "Holm-corrected within the family of one dataset × pair (every pairwise comparison between two student "
         "methods of that table, the family kdbench compare uses too; the teacher row is a reference, not in the "
         "family; Welch's test where seeds do not pair, see leaderboard.csv *_test). ECE: expected calibration error (15 equal-width bins), NLL: mean "
         "negative log-likelihood, both on the test split. Hyperparameters: what the row ran with, and where "
         "they came from (paper = the method's published defaults; defaults = a plugin's own, no paper; "
         "tuned (N trials, val) = selected on the validation split). – = does not apply.")


#: what each FSS / RS estimator (evaluation.fss_estimator) computes, for the board's notes
#: (kdbench.evaluation.similarity.FSS_ESTIMATORS; docs/metrics.md "FSS / RS estimator")
FSS_ESTIMATOR_TEXT = {
    "u_centered": "u_centered (kdbench's default: the unbiased U-centred distance correlation of the raw "
                  "stage features over the evaluation subset)",
    "v_normalized": "v_normalized (the current UniCAM reference's: the biased V-statistic on L2-normalised "
                    "rows; near 1 even for independent features)",
    "u_centered_batch5": "u_centered_batch5 (the UniCAM paper-era code's: U-centred, averaged over batches of "
                         "5 images)",
}


def fss_note(board) -> str:
    """Which FSS / RS estimator the board's runs used (every distinct one, each explained)."""
    if "fss_estimator" not in board.columns:
        return ""
    used = [v for v in dict.fromkeys(board["fss_estimator"].tolist()) if isinstance(v, str) and v]
    if "varies" in used:  # one row's seeds disagree: runs.csv has the estimator per run
        used = [u for u in used if u != "varies"] + ["varies (per run in runs.csv)"]
    if not used:
        return ""
    text = "; ".join(FSS_ESTIMATOR_TEXT.get(u, u) for u in used)
    return f"FSS / RS estimator: {text}."


def notes(board) -> str:
    """The board's notes: :data:`NOTES`, where the runs say, the FSS / RS estimator, and a
    warning on the cells where tuned and untuned methods meet (:mod:`kdbench.board.hparams_mix`)."""
    return " ".join(t for t in (NOTES, fss_note(board), mixed_note(board)) if t)


def fmt(x, digits: int = 3) -> str:
    return DASH if isnan(x) else f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if isnan(p):
        return DASH
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def fmt_delta_ci(d, lo, hi, scale: float = 100.0, digits: int = 2) -> str:
    if isnan(d):
        return DASH
    s = f"{d * scale:+.{digits}f}"
    if not (isnan(lo) or isnan(hi)):
        s += f" [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
    return s


def hparams_display(value, source) -> str:
    text = "" if isnan(value) else str(value)
    try:
        hp = json.loads(text) if text else {}
    except ValueError:
        hp = None
    if isinstance(hp, dict):
        shown = ", ".join(f"{k}={_short(v)}" for k, v in hp.items())
    else:
        shown = text
    src = "" if isnan(source) else str(source)
    if not shown and not src:
        return DASH
    return f"{shown or 'none'} ({src})" if src else shown


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def method_display(row) -> str:
    if row["method"] == "teacher":
        return f"teacher ({row['teacher']})"
    return str(row["method"])


def cell_text(row, col: str, kind: str) -> str:
    if kind == "text":
        return method_display(row) if col == "method" else str(row[col])
    if kind == "int":
        return DASH if isnan(row[col]) else str(int(row[col]))
    if kind == "meanstd":
        m, s = row[f"{col}_mean"], row[f"{col}_std"]
        if isnan(m):
            return DASH
        return f"{m * 100:.2f}" + ("" if isnan(s) else f" ± {s * 100:.2f}")
    if kind == "deltaci":
        return fmt_delta_ci(row[col], row.get(f"{col}_ci_lo"), row.get(f"{col}_ci_hi"))
    if kind == "hparams":
        return hparams_display(row.get("hparams"), row.get("hparams_source"))
    v = row[col]
    if isnan(v):
        return DASH
    if kind == "p":
        return fmt_p(v)
    if kind == "pct":
        return f"{v * 100:.2f}"
    if kind == "mparams":
        return f"{v / 1e6:.3f}"
    if kind == "sec":
        return f"{v:.1f}"
    return f"{v:.3f}"


def sort_value(row, col: str, kind: str) -> str:
    v = row[f"{col}_mean"] if kind == "meanstd" else row.get(col)
    if kind in ("text", "hparams"):
        return cell_text(row, col, kind)
    return "" if isnan(v) else repr(float(v))


def columns_for(board) -> List[Tuple[str, str, str]]:
    cols = list(DISPLAY)
    if "published_top1" in board.columns and board["published_top1"].notna().any():
        cols += PUBLISHED_DISPLAY
    return cols


def cells(board):
    """(dataset, teacher, student, rows) per table, in board order."""
    for (d, t, s), g in board.groupby(["dataset", "teacher", "student"], sort=False):
        yield d, t, s, g


def cell_notes(g) -> List[str]:
    """A cell's warnings (leaderboard.csv ``cell_notes``: one text per cell, on each row)."""
    if "cell_notes" not in g.columns:
        return []
    return [str(n) for n in dict.fromkeys(g["cell_notes"].tolist()) if isinstance(n, str) and n]


def best_index(g):
    """The index of the best student row of a table (None without top-1)."""
    st = g[g["method"] != "teacher"]["top1_mean"].dropna()
    return None if st.empty else st.idxmax()


def display_frame(g, columns):
    """The table of one cell as strings (pandas DataFrame, the headers as columns)."""
    import pandas as pd

    return pd.DataFrame([[cell_text(row, c, k) for c, _, k in columns] for _, row in g.iterrows()],
                        columns=[h for _, h, _ in columns], index=g.index)


def entry_text(entry, metric: str) -> str:
    """A scorecard entry's Δ and CI (points for accuracies, 3 decimals otherwise)."""
    if entry.get("folded"):
        return entry["detail"]
    if metric in PERCENT:
        return fmt_delta_ci(entry["delta"], entry["ci_lo"], entry["ci_hi"], 100.0, 1)
    return fmt_delta_ci(entry["delta"], entry["ci_lo"], entry["ci_hi"], 1.0, 3)


SCORECARD_NOTE = ("Δ = method − baseline over paired seeds, [95 % CI] (points for accuracies). Verdict: holds / "
                  "refuted = the Holm-corrected paired t-test (family: every claim test of one dataset × pair) "
                  "gives p < 0.05 and Δ has / has not the claimed sign (the CI then excludes 0); inconclusive = "
                  "the CI straddles 0, or excludes it only before the correction, or no test is possible (fewer "
                  "than two paired seeds, or the same difference on every seed); no data = the method did not "
                  "run there. UniCAM folds its per-method rows: k of m methods hold, the verdict by majority. "
                  "Full detail: claims.csv.")


#: the overall table as rendered: (header, how to show a row of overall.csv)
OVERALL_HEADERS = ["Method", "Cells", "Mean rank [95 % CI]", "Best in", "vs kd W/T/L", "vs vanilla W/T/L"]


def _wtl(row, base: str) -> str:
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    vals = [row.get(f"{o}_vs_{base}") for o in ("wins", "ties", "losses")]
    if any(v is None or pd.isna(v) for v in vals):   # the baseline itself, or it never shares a cell
        return DASH
    return " / ".join(str(int(v)) for v in vals)


def overall_frame(table):
    """overall.csv as strings, one row per method (:data:`OVERALL_HEADERS`)."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    rows = []
    for _, r in table.iterrows():
        cells_txt = f"{int(r['n_cells'])} of {int(r['n_cells_board'])}"
        if r["n_excluded"]:
            cells_txt += f" ({int(r['n_excluded'])} excluded)"
        ci = "" if isnan(r["rank_ci_lo"]) else f" [{r['rank_ci_lo']:.2f}, {r['rank_ci_hi']:.2f}]"
        rows.append([str(r["method"]), cells_txt, f"{r['mean_rank']:.2f}{ci}", str(int(r["n_best"])),
                     _wtl(r, "kd"), _wtl(r, "vanilla")])
    return pd.DataFrame(rows, columns=OVERALL_HEADERS)
