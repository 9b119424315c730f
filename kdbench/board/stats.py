"""The board's statistics: differences over seeds with a 95 % CI, and Holm's correction.

Every run of a seed shares its data order and initialisation with the runs of the same
seed of every other method (kdbench seeds the data loader and the student from the run's
seed), so two methods' seeds *pair*: :func:`difference` uses a paired t-test and the
paired t-interval over the seeds both sides have. Only when fewer than two seeds pair up
(e.g. a method run on other seeds) it falls back to Welch's t-test and the
Welch-Satterthwaite interval over all seeds, and says so in ``test``.

:func:`holm` adjusts a family of p-values (Holm 1979, step-down): sort ascending,
p_(i) -> max_{j<=i} min(1, (m - j + 1) p_(j)).

**The method comparisons' Holm family** (:func:`cell_comparisons`, the one definition): in
one cell (dataset x teacher -> student pair) and on one metric, *every pairwise comparison
between two student methods of the cell* that has a p-value; m = k(k-1)/2 for k tested
methods. The board's Δ vs kd / vanilla columns, ``kdbench compare`` (whatever ``--vs``
picks) and the overall view's wins / ties / losses all read their Holm p from it, so one
comparison has one p_holm wherever it is shown. (The seed papers' claims are another kind
of test and have their own family: :mod:`kdbench.board.claims`.)
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

ALPHA = 0.05
CONFIDENCE = 0.95

PAIRED, WELCH, ONE_SAMPLE = "paired_t", "welch_t", "one_sample_t"


def isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def series(df, method: str, metric: str):
    """Per-seed values of ``metric`` for ``method`` (mean over duplicate seeds, NaN
    dropped), indexed by seed and sorted (:func:`series_by_method` for one method)."""
    import pandas as pd

    found = series_by_method(df[df["method"] == method], metric)
    return found.get(method, pd.Series(dtype=float))


def series_by_method(df, metric: str) -> Dict:
    """:func:`series` of every method of ``df`` at once (one groupby): ``{method: series}``,
    only methods with a value; the same values as :func:`series` method by method."""
    import pandas as pd

    if metric not in df.columns:
        return {}
    frame = pd.DataFrame({"method": df["method"].to_numpy(), "seed": df["seed"].to_numpy(),
                          "value": pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=float)}).dropna()
    return {m: pd.Series(g["value"].to_numpy(), index=g["seed"].to_numpy()).groupby(level=0).mean().sort_index()
            for m, g in frame.groupby("method", sort=False)}


def _empty(a, b) -> Dict:
    return {"delta": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p_value": math.nan, "n": 0,
            "n_a": int(len(a)), "n_b": int(len(b)), "a_mean": math.nan, "b_mean": math.nan, "test": None}


def difference(a, b, confidence: float = CONFIDENCE) -> Dict:
    """a − b for two per-seed series (indexed by seed): ``delta`` (mean difference),
    ``ci_lo`` / ``ci_hi`` (two-sided ``confidence`` interval), ``p_value`` (two-sided),
    ``n`` (paired seeds, or the smaller side for Welch), ``n_a`` / ``n_b``, the two means
    over the seeds used, and ``test`` (``paired_t``, ``welch_t`` or None: fewer than two
    values on a side leave the CI and p empty, the delta is still the difference of means).
    The same paired difference on every seed gives a zero-width CI and no p-value.
    The tests are scipy's ``ttest_rel`` / ``ttest_ind(equal_var=False)`` with their
    ``confidence_interval``, in closed form (:func:`_t_test`; ``tests/test_leaderboard.py``
    checks them against scipy): a board compares every pair of methods, thousands of tests."""
    out = _empty(a, b)
    if len(a) == 0 or len(b) == 0:
        return out
    common = a.index.intersection(b.index)
    res = None
    if len(common) >= 2:
        x, y = a.loc[common].to_numpy(dtype=float), b.loc[common].to_numpy(dtype=float)
        d = x - y
        res = _t_test(float(d.mean()), float(d.var(ddof=1)) / len(d), len(d) - 1, confidence)
        out.update(n=int(len(common)), test=PAIRED)
    else:
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        out["n"] = int(min(len(x), len(y)))
        if len(x) >= 2 and len(y) >= 2:
            vx, vy = float(x.var(ddof=1)) / len(x), float(y.var(ddof=1)) / len(y)
            den = vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1)  # Welch-Satterthwaite
            df = (vx + vy) ** 2 / den if den > 0 else math.nan
            res = _t_test(float(x.mean()) - float(y.mean()), vx + vy, df, confidence)
            out["test"] = WELCH
    out["a_mean"], out["b_mean"] = float(x.mean()), float(y.mean())
    out["delta"] = out["a_mean"] - out["b_mean"]
    if res is not None:
        p, lo, hi = res
        out["p_value"] = p
        if out["test"] == PAIRED and float((x - y).std()) == 0.0:
            # the same difference on every seed (common when accuracies are quantised by a
            # small test set): a zero-width interval and no test (t is undefined; scipy's
            # p = 0 would call two identical seeds significant)
            out["ci_lo"] = out["ci_hi"] = out["delta"]
            out["p_value"] = math.nan
        elif not (math.isnan(lo) or math.isnan(hi)):
            out["ci_lo"], out["ci_hi"] = lo, hi
    return out


def _t_test(mean: float, var_of_mean: float, df: float, confidence: float):
    """(two-sided p, ci_lo, ci_hi) of a t statistic ``mean / sqrt(var_of_mean)`` with ``df``
    degrees of freedom: t's survival function and quantile as scipy's ``t`` distribution
    computes them (``special.stdtr`` / ``stdtrit``); NaN where t is undefined."""
    from scipy import special

    se = math.sqrt(var_of_mean) if var_of_mean >= 0 else math.nan
    if se == 0 or math.isnan(se) or math.isnan(df):
        return math.nan, math.nan, math.nan
    t = mean / se
    p = float(min(1.0, 2 * special.stdtr(df, -abs(t))))
    half = float(special.stdtrit(df, 0.5 + confidence / 2)) * se
    return p, mean - half, mean + half


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE):
    """(mean, lo, hi): the t-interval of a mean (lo / hi NaN with fewer than two values)."""
    import numpy as np
    from scipy import stats

    v = np.asarray([x for x in values if not isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def holm(p_values: Sequence[Optional[float]]):
    """Holm-adjusted p-values in the input order; NaN / None stay NaN and do not count in
    the family size m."""
    idx = [i for i, p in enumerate(p_values) if not isnan(p)]
    out = [math.nan] * len(p_values)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: float(p_values[i]))):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def verdict(delta: float, p_adjusted: float, direction: str = "higher", alpha: float = ALPHA) -> str:
    """``holds`` / ``refuted`` when the Holm-adjusted p is below ``alpha`` and the difference
    has / has not the claimed sign, ``inconclusive`` otherwise (the CI straddles 0, or it
    excludes 0 only before the correction, or there is no p-value), ``no data`` when there is
    no difference."""
    if isnan(delta):
        return "no data"
    if isnan(p_adjusted) or p_adjusted >= alpha:
        return "inconclusive"
    good = delta > 0 if direction == "higher" else delta < 0
    return "holds" if good else "refuted"


#: the family's statement, for the board's notes and ``kdbench compare`` (module docstring)
FAMILY_NOTE = ("Holm-corrected within one family per dataset × pair and metric: every pairwise comparison "
               "between two student methods of that cell (m = k(k−1)/2 for k methods); the board, "
               "kdbench compare and the overall view read the same corrected p.")


def cell_comparisons(g, metric: str = "top1", methods: Optional[Sequence[str]] = None) -> Dict:
    """Every pairwise comparison of one cell's methods on ``metric`` (``g``: the cell's
    runs; ``methods``: the cell's student methods, default every method of ``g`` in order
    of appearance), Holm-corrected within that family (module docstring): ``{(a, b): d}``
    for each ordered pair a != b, ``d`` as :func:`difference` (a − b) plus ``p_holm``. The
    two orders of a pair share p and p_holm; a method without values is left out."""
    names = [m for m in (methods if methods is not None else dict.fromkeys(g["method"]))]
    every = series_by_method(g, metric)
    names = [m for m in names if m in every]
    values = {m: every[m] for m in names}
    out: Dict = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[(a, b)] = difference(values[a], values[b])
    keys = list(out)
    for k, p in zip(keys, holm([out[k]["p_value"] for k in keys])):
        out[k]["p_holm"] = p
    for (a, b) in keys:
        out[(b, a)] = _reversed(out[(a, b)])
    return out


def _reversed(d: Dict) -> Dict:
    """b − a from a − b: the same test, the interval mirrored (0.0 − x: a zero stays +0.0, never −0)."""
    r = dict(d)
    r.update(delta=0.0 - d["delta"], ci_lo=0.0 - d["ci_hi"], ci_hi=0.0 - d["ci_lo"], n_a=d["n_b"], n_b=d["n_a"],
             a_mean=d["b_mean"], b_mean=d["a_mean"])
    return r


def outcome(d: Optional[Dict], direction: str = "higher", alpha: float = ALPHA) -> str:
    """``win`` / ``loss`` when a comparison's Holm p is below ``alpha`` and a − b is better /
    worse in ``direction``; ``tie`` otherwise (no test, or not significant); None without a
    comparison (a side did not run)."""
    if d is None or isnan(d.get("delta")):
        return None
    v = verdict(d["delta"], d.get("p_holm", math.nan), direction, alpha)
    return {"holds": "win", "refuted": "loss"}.get(v, "tie")
