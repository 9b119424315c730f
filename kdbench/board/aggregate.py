"""Aggregation: runs.csv -> leaderboard.csv.

One row per dataset x teacher x student x method over seeds, and one ``teacher`` row
per cell (dataset x pair, method ``teacher``): the teacher's own numbers from its
metrics.json, one value per teacher seed.

Columns per row: ``<metric>_mean`` / ``<metric>_std`` (sample std, ddof=1; NaN-aware: a
seed without the metric does not count; none -> empty), ``n_seeds``, the constants
(params, flops, epochs), ``rank`` (1 = best top1_mean among the students of the cell;
empty for the teacher row), the hyperparameters the row ran with (``hparams``, JSON) and
their source (``hparams_source``: ``paper``, ``defaults`` (a plugin's class values) or
``tuned (N trials, val)``; ``varies``
when the seeds disagree), and for each baseline B in (kd, vanilla):

- ``delta_vs_B``: the mean over paired seeds of (row − B) top-1 (0 for B itself);
- ``delta_vs_B_ci_lo`` / ``_ci_hi``: its 95 % CI (paired t-interval over seeds);
- ``delta_vs_B_p``: two-sided p-value, ``delta_vs_B_test``: paired_t, welch_t (the seeds
  do not pair) or one_sample_t (the teacher row with one teacher seed: its accuracy is a
  constant against B's seeds);
- ``delta_vs_B_p_holm``: Holm-corrected within the board's one family of method
  comparisons (:func:`kdbench.board.stats.cell_comparisons`: every pairwise comparison
  between two student methods of the cell), the same p_holm ``kdbench compare`` shows.
  The teacher row's Δ is a reference with its CI but no part of the family (its
  ``_p_holm`` is empty).

``cell_notes``: the cell's warnings, the same on each of its rows (today: runs of more than
one provenance, :func:`kdbench.board.provenance.cell_note`; empty when none).

Rows: datasets and pairs in the given (profile) order; within a cell the teacher first,
then the students best first.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from kdbench.board import stats
from kdbench.board.records import CELL, CONSTANTS, DEFAULT_SOURCE, KEYS, METRICS, TEACHER_METRICS, teacher_values
from kdbench.board.published import COLUMNS as PUBLISHED
from kdbench.board import published as pub
from kdbench.board import provenance

TEACHER = "teacher"
BASELINES = ("kd", "vanilla")
DELTA_PARTS = ("", "_ci_lo", "_ci_hi", "_p", "_p_holm", "_test")


def delta_columns(base: str) -> List[str]:
    return [f"delta_vs_{base}{s}" for s in DELTA_PARTS]


def board_columns() -> List[str]:
    deltas = [c for b in BASELINES for c in delta_columns(b)]
    return (KEYS + ["n_seeds", "rank", "top1_mean", "top1_std"] + deltas
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std") if m != "top1"] + CONSTANTS
            + ["hparams", "hparams_source", "fss_estimator"] + PUBLISHED + ["cell_notes"])


def _ordered(values, order: Optional[Sequence]) -> list:
    seen = list(dict.fromkeys(values))
    if not order:
        return seen
    rank = {v: i for i, v in enumerate(order)}
    return sorted(seen, key=lambda v: (rank.get(v, len(rank)), seen.index(v)))


def _one(values) -> Any:
    vals = [v for v in values if isinstance(v, str) and v != ""] if values is not None else []
    uniq = list(dict.fromkeys(vals))
    return uniq[0] if len(uniq) == 1 else ("varies" if uniq else "")


def _student_row(key, g) -> Dict[str, Any]:
    import pandas as pd

    row: Dict[str, Any] = dict(zip(KEYS, key))
    row["n_seeds"] = int(g["seed"].nunique())
    for m in METRICS:
        vals = pd.to_numeric(g[m], errors="coerce").dropna() if m in g else []
        row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
        row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
    for c in CONSTANTS:
        vals = g[c].dropna() if c in g else []
        row[c] = vals.iloc[0] if len(vals) else math.nan
    row["hparams"] = _one(g["hparams"].tolist()) if "hparams" in g else ""
    src = _one(g["hparams_source"].tolist()) if "hparams_source" in g else ""
    row["hparams_source"] = src or DEFAULT_SOURCE
    row["fss_estimator"] = _one(g["fss_estimator"].tolist()) if "fss_estimator" in g else ""
    return row


def teacher_series(g):
    """The teacher's top-1 that each student seed of the cell was distilled from, by seed."""
    import pandas as pd

    if "teacher_top1" not in g:
        return pd.Series(dtype=float)
    s = pd.Series(pd.to_numeric(g["teacher_top1"], errors="coerce").to_numpy(dtype=float),
                  index=g["seed"].to_numpy()).dropna()
    return s.groupby(level=0).first().sort_index()


def _teacher_row(cell, g) -> Dict[str, Any]:
    import pandas as pd

    row: Dict[str, Any] = dict(zip(CELL, cell))
    row["method"] = TEACHER
    tv = teacher_values(g)
    row["n_seeds"] = int(len(tv))
    for m in METRICS:
        row[f"{m}_mean"] = row[f"{m}_std"] = math.nan
    for m in TEACHER_METRICS:
        if m in CONSTANTS:
            continue
        vals = pd.to_numeric(tv[m], errors="coerce").dropna() if m in tv else []
        row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
        row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
    row["teacher_top1_mean"], row["teacher_top1_std"] = row["top1_mean"], row["top1_std"]
    for c in CONSTANTS:
        vals = tv[c].dropna() if c in tv else []
        row[c] = vals.iloc[0] if len(vals) else math.nan
    row["hparams"], row["hparams_source"], row["fss_estimator"] = "", "", ""
    return row


def _deltas(board, runs) -> None:
    """The delta_vs_{kd,vanilla} columns with CI, p, test and Holm (module docstring)."""
    for base in BASELINES:
        for c in delta_columns(base):
            board[c] = None if c.endswith("_test") else math.nan
    for cell, g in runs.groupby(CELL, sort=False, dropna=False):
        rows = board.index[(board["dataset"] == cell[0]) & (board["teacher"] == cell[1])
                           & (board["student"] == cell[2])]
        t_series = teacher_series(g)
        n_teacher_seeds = len(teacher_values(g))
        family = stats.cell_comparisons(g, "top1")
        for base in BASELINES:
            b = stats.series(g, base, "top1")
            col = f"delta_vs_{base}"
            if b.empty:
                continue
            for i in rows:
                method = board.at[i, "method"]
                if method == base:
                    board.at[i, col] = 0.0
                    continue
                d = stats.difference(t_series, b) if method == TEACHER else family.get((method, base))
                if d is None:
                    continue
                test = d["test"]
                if method == TEACHER and test == stats.PAIRED and n_teacher_seeds == 1:
                    test = stats.ONE_SAMPLE
                board.at[i, col] = d["delta"]
                board.at[i, f"{col}_ci_lo"], board.at[i, f"{col}_ci_hi"] = d["ci_lo"], d["ci_hi"]
                board.at[i, f"{col}_p"] = d["p_value"]
                board.at[i, f"{col}_test"] = test
                board.at[i, f"{col}_p_holm"] = d.get("p_holm", math.nan)


def aggregate(runs, *, datasets: Optional[Sequence[str]] = None, pairs: Optional[Sequence] = None,
              published: Optional[list] = None):
    """leaderboard.csv from runs.csv (module docstring); ``published``: the entries of
    :func:`kdbench.board.published.load`."""
    import pandas as pd

    columns = board_columns()
    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=columns)
    rows = []
    for cell, g in runs.groupby(CELL, sort=False, dropna=False):
        rows.append(_teacher_row(cell, g))
        for key, gm in g.groupby("method", sort=False, dropna=False):
            rows.append(_student_row(cell + (key,), gm))
    board = pd.DataFrame(rows)
    for c in columns:
        if c not in board:
            board[c] = math.nan
    _deltas(board, runs)
    students = board["method"] != TEACHER
    board["rank"] = pd.array([pd.NA] * len(board), dtype="Int64")
    ranks = board[students].groupby(CELL, sort=False)["top1_mean"].rank(ascending=False, method="min")
    board.loc[students, "rank"] = ranks.astype("Int64")
    pub.attach(board, runs, published or [])
    notes = provenance.cell_notes(runs)
    board["cell_notes"] = [notes.get(c, "") for c in zip(board["dataset"], board["teacher"], board["student"])]

    ds_order = _ordered(board["dataset"], datasets)
    pair_order = _ordered(list(zip(board["teacher"], board["student"])),
                          [tuple(p) if not isinstance(p, dict) else (p["teacher"], p["student"]) for p in pairs or []])
    board["_d"] = board["dataset"].map({d: i for i, d in enumerate(ds_order)})
    board["_p"] = [pair_order.index(p) for p in zip(board["teacher"], board["student"])]
    board["_k"] = students.astype(int)
    board["_t"] = board["top1_mean"].fillna(-1.0)
    board = board.sort_values(["_d", "_p", "_k", "_t", "method"], ascending=[True, True, True, False, True],
                              kind="stable")
    return board[columns].reset_index(drop=True)
