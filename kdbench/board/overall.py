"""The overall view across cells: where each method stands over everything the board covers.

A *cell* is one dataset x teacher -> student pair. The board mixes datasets of very
different difficulty (a point of top-1 on one is not a point on another), so the overall
view summarises **ranks and test outcomes, never averaged accuracies**:

- **mean rank** (:func:`rank_table`): in every cell the student methods that ran there are
  ranked by their mean top-1 over seeds (1 = best; ties share the average rank), and a
  method's mean rank is the mean over the cells it ran in. Its 95 % interval is a
  percentile bootstrap (:data:`N_BOOT` replicates, RNG seed :data:`BOOT_SEED`) that
  resamples *seeds within each cell*: each replicate draws the cell's seeds with
  replacement, once for all methods of the cell (a seed pairs across methods: same data
  order and initialisation), recomputes every method's mean over the drawn seeds, re-ranks
  the cell, and averages the ranks over cells again. With few seeds per cell the
  bootstrap sees few distinct resamples (3 seeds: 10), so the interval is coarse;
  cells are not resampled (the board's cells are fixed, not a sample of a population).
- **wins / ties / losses** against kd and vanilla (and, in ``kdbench compare``, against
  every other method): per cell, the board's paired test with its Holm correction
  (:func:`kdbench.board.stats.cell_comparisons`, the one family): win / loss = p_holm <
  0.05 and the method better / worse; tie = anything else (not significant, or no test).
- **cells**: a row covers only the cells the method ran in. A cell whose pair excludes the
  method (``exclude_methods``) is not counted against it: neither ranked, nor a loss, nor
  a miss in the performance profile; ``n_excluded`` says how many there were.
- **performance profile** (:func:`performance_profile`, the Dolan–Moré / AlgoPerf form):
  for a metric, the fraction of a method's cells in which its mean is within δ (points for
  accuracies) of the cell's best method, as δ grows. ρ(0) = the share of cells it is best
  in; a curve that reaches 1 early is never far behind.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from kdbench.board import stats
from kdbench.board.records import CELL
from kdbench.board.render.text import PERCENT
from kdbench.config import pair_methods
from kdbench.errors import UnknownChoiceError

N_BOOT = 1000
BOOT_SEED = 0
BASELINES = ("kd", "vanilla")
#: metrics where lower is better (every other metric: higher is better)
LOWER_IS_BETTER = {"ece", "nll", "train_s", "eval_s"}

OUTCOMES = ("wins", "ties", "losses")
COLUMNS = (["method", "n_cells", "n_cells_board", "n_excluded", "mean_rank", "rank_ci_lo", "rank_ci_hi", "n_best"]
           + [f"{o}_vs_{b}" for b in BASELINES for o in OUTCOMES])

NOTE = (f"Overall: one row per method over the cells (dataset × pair) it ran in. Mean rank: the method's rank by "
        f"mean top-1 within each cell (1 = best, ties share the average rank), averaged over its cells; "
        f"[95 % interval]: percentile bootstrap, {N_BOOT} replicates (RNG seed {BOOT_SEED}) resampling the seeds "
        f"within each cell (the same draw for every method of the cell; cells are not resampled). W/T/L vs kd / "
        f"vanilla: cells where the paired test, Holm-corrected in the cell's family, says better / not "
        f"significant / worse. Cells where a pair excludes the method (exclude_methods) are not counted against "
        f"it. Ranks, not averaged accuracies: the datasets differ in difficulty.")
PROFILE_NOTE = ("Performance profile (Dolan–Moré): for each method, the fraction of the cells it ran in where its "
                "mean is within δ of the cell's best method, as δ grows (points for accuracies; lower-is-better "
                "metrics measured the other way).")


def direction(metric: str) -> str:
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def scale(metric: str) -> float:
    """Points for accuracy-like metrics (fractions in the CSVs)."""
    return 100.0 if metric in PERCENT else 1.0


def cells(runs) -> List[tuple]:
    return [c for c, _ in runs.groupby(CELL, sort=False, dropna=False)]


def cell_means(runs, metric: str = "top1"):
    """Cells x methods: the mean of ``metric`` over seeds (NaN where the method has none)."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    rows = {}
    for cell, g in runs.groupby(CELL, sort=False, dropna=False):
        every = stats.series_by_method(g, metric)
        rows[cell] = {m: float(every[m].mean()) for m in dict.fromkeys(g["method"]) if m in every}
    methods = list(dict.fromkeys(runs["method"]))
    return pd.DataFrame.from_dict(rows, orient="index", columns=methods).astype(float)


def _cell_matrix(g, metric: str):
    """(methods, values): methods x seeds of one cell (NaN where a method lacks a seed)."""

    every = stats.series_by_method(g, metric)
    methods = [m for m in dict.fromkeys(g["method"]) if m in every]
    seeds = sorted(set(g["seed"]))
    values = np.full((len(methods), len(seeds)), np.nan)
    for i, m in enumerate(methods):
        s = every[m]
        for j, seed in enumerate(seeds):
            if seed in s.index:
                values[i, j] = s.loc[seed]
    return methods, values


def _resampled_ranks(values, rng, n_boot: int, lower: bool):
    """methods x (1 + n_boot) ranks of one cell: column 0 from all seeds, then one column
    per bootstrap draw of the seeds (with replacement, shared by every method)."""
    from scipy.stats import rankdata  # scipy: heavy, imported where used

    k, n = values.shape
    draws = rng.integers(0, n, size=(n_boot, n))
    counts = np.ones((n_boot + 1, n))
    counts[1:] = 0
    np.add.at(counts[1:], (np.arange(n_boot)[:, None], draws), 1.0)
    have = ~np.isnan(values)
    total = np.where(have, values, 0.0) @ counts.T
    weight = have.astype(float) @ counts.T
    full = np.nanmean(values, axis=1)[:, None]
    means = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), full)
    return rankdata(means if lower else -means, axis=0, method="average")


def rank_table(runs, metric: str = "top1", n_boot: int = N_BOOT, seed: int = BOOT_SEED):
    """Per method: ``mean_rank`` over the cells it ran in, its bootstrap ``rank_ci_lo`` /
    ``rank_ci_hi`` (module docstring), ``n_cells``, ``n_best`` (cells where it ranks 1)."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    rng = np.random.default_rng(seed)
    sums: Dict[str, np.ndarray] = {}
    n_cells: Dict[str, int] = {}
    n_best: Dict[str, int] = {}
    for _, g in runs.groupby(CELL, sort=False, dropna=False):
        methods, values = _cell_matrix(g, metric)
        if not methods:
            continue
        ranks = _resampled_ranks(values, rng, n_boot, direction(metric) == "lower")
        for m, r in zip(methods, ranks):
            sums[m] = sums.get(m, 0.0) + r
            n_cells[m] = n_cells.get(m, 0) + 1
            n_best[m] = n_best.get(m, 0) + int(r[0] == ranks[:, 0].min())
    rows = []
    for m, s in sums.items():
        mean = s / n_cells[m]
        lo, hi = np.percentile(mean[1:], [2.5, 97.5]) if n_boot else (math.nan, math.nan)
        rows.append({"method": m, "n_cells": n_cells[m], "mean_rank": float(mean[0]), "rank_ci_lo": float(lo),
                     "rank_ci_hi": float(hi), "n_best": n_best[m]})
    out = pd.DataFrame(rows, columns=["method", "n_cells", "mean_rank", "rank_ci_lo", "rank_ci_hi", "n_best"])
    return out.sort_values(["mean_rank", "method"], kind="stable").reset_index(drop=True)


def families(runs, metric: str = "top1") -> List[Dict]:
    """Every cell's Holm family of comparisons on ``metric``
    (:func:`kdbench.board.stats.cell_comparisons`), computed once per board."""
    return [stats.cell_comparisons(g, metric) for _, g in runs.groupby(CELL, sort=False, dropna=False)]


def outcomes(fams: Sequence[Dict], method: str, others: Optional[Sequence[str]] = None, metric: str = "top1",
             alpha: float = stats.ALPHA) -> Dict[str, Dict[str, int]]:
    """``{other: {"wins", "ties", "losses", "n_cells"}}``: ``method`` against each other
    method over the cells both ran in (``fams``: :func:`families`), each cell decided by
    the family's Holm p."""
    out: Dict[str, Dict[str, int]] = {}
    for family in fams:
        for (a, b), d in family.items():
            if a != method or (others is not None and b not in others):
                continue
            o = stats.outcome(d, direction(metric), alpha)
            if o is None:
                continue
            counts = out.setdefault(b, {"wins": 0, "ties": 0, "losses": 0, "n_cells": 0})
            counts[{"win": "wins", "tie": "ties", "loss": "losses"}[o]] += 1
            counts["n_cells"] += 1
    return out


def excluded_counts(profile: Optional[dict], board_cells: Sequence[tuple]) -> Dict[str, int]:
    """Per method of the profile: how many of the board's cells its pair excludes."""
    out: Dict[str, int] = {}
    if not profile or not profile.get("pairs") or not profile.get("methods"):
        return out
    for _, teacher, student in board_cells:
        try:
            ran = set(pair_methods(profile, teacher, student))
        except UnknownChoiceError:  # a cell of runs whose pair the profile does not list: nothing excluded there
            continue
        for m in profile["methods"]:
            out[m] = out.get(m, 0) + (m not in ran)
    return out


def overall_table(runs, profile: Optional[dict] = None, metric: str = "top1", alpha: float = stats.ALPHA):
    """overall.csv: one row per method (:data:`COLUMNS`), best mean rank first."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=COLUMNS)
    table = rank_table(runs, metric)
    board_cells = cells(runs)
    excluded = excluded_counts(profile, board_cells)
    table["n_cells_board"] = len(board_cells)
    table["n_excluded"] = [excluded.get(m, 0) for m in table["method"]]
    for base in BASELINES:
        for o in OUTCOMES:
            table[f"{o}_vs_{base}"] = pd.array([pd.NA] * len(table), dtype="Int64")
    fams = families(runs, metric)
    for i, m in enumerate(table["method"]):
        res = outcomes(fams, m, [b for b in BASELINES if b != m], metric, alpha)
        for base, counts in res.items():
            for o in OUTCOMES:
                table.loc[i, f"{o}_vs_{base}"] = counts[o]
    return table[COLUMNS]


def performance_profile(runs, metric: str = "top1"):
    """Long form (``metric``, ``method``, ``delta``, ``fraction``): each method's ρ(δ) at
    every δ where some curve steps (module docstring). ``delta`` in points for accuracies;
    empty when no cell has the metric."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    cols = ["metric", "method", "delta", "fraction"]
    means = cell_means(runs, metric).dropna(axis=1, how="all")
    if means.empty:
        return pd.DataFrame(columns=cols)
    best = means.min(axis=1) if direction(metric) == "lower" else means.max(axis=1)
    gaps = (means.sub(best, axis=0).abs()) * scale(metric)
    steps = np.unique(np.concatenate([[0.0], gaps.to_numpy()[~np.isnan(gaps.to_numpy())]]))
    rows = []
    for m in gaps.columns:
        g = gaps[m].dropna().to_numpy()
        rows += [(metric, m, float(d), float((g <= d + 1e-12).mean())) for d in steps]
    return pd.DataFrame(rows, columns=cols)
