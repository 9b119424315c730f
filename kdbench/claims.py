"""The seed papers' claims as statistical tests over seeds.

``claims_table(runs)`` takes the per-seed runs table (columns dataset, teacher, student,
method, seed + the metric names of ``specs/evaluation.md``) and returns one row per
claim × dataset × teacher/student pair:

| claim | paper | method | baseline | metric | the claim |
| --- | --- | --- | --- | --- | --- |
| tdd_decision | TDD (Song et al., CVPR 2021) | tdd | kd | decision_consistency | higher |
| cid_ood | CID (Deng & Zhang, NeurIPS 2021) | cid | kd | top1_ood | higher |
| e2kd_agreement | e2KD (Parchami-Araghi et al., ECCV 2024) | e2kd | kd | agreement | higher |
| e2kd_expl_sim | e2KD | e2kd | kd | expl_sim | higher |
| fcfd_top1 | FCFD (Liu et al., ICLR 2023) | fcfd | kd | top1 | higher |
| unicam_epg | UniCAM (Adhane et al.) | kd (and every other distilled method present) | same runs | unicam_epg_distilled vs unicam_epg_residual | higher |

Test: a paired t-test over the seeds both sides have (scipy.stats.ttest_rel; the UniCAM
claim compares two metrics of the same runs, so it is always paired) when at least two
seeds pair up, else Welch's t-test (ttest_ind, equal_var=False) over all available seeds.
``n`` is the number of paired seeds (paired test) or the smaller group's size (Welch);
``n_method`` / ``n_baseline`` count the seeds with a value on each side.
``p_value`` is two-sided; ``holds`` = the delta (method − baseline) has the claimed sign
and p < 0.05. With fewer than two values on a side there is no test: p_value is NaN and
holds is False. A row whose method or baseline has no data at all is still reported, with
n = 0 and empty (NaN / None) values.

UniCAM decision: the paper's claim ("distilled features sit on the object, residual ones
on the background") is about KD in general; the primary row is the ``kd`` student (always
reported, n = 0 when missing) and every other distilled method present in the table gets
its own row too, so that the claim can be read per method.
"""
from __future__ import annotations

import math
from typing import List

ALPHA = 0.05

#: (claim, paper, method, baseline, metric, baseline_metric, direction)
CLAIMS = [
    ("tdd_decision", "TDD (Song et al., CVPR 2021)", "tdd", "kd", "decision_consistency", "decision_consistency", "higher"),
    ("cid_ood", "CID (Deng & Zhang, NeurIPS 2021)", "cid", "kd", "top1_ood", "top1_ood", "higher"),
    ("e2kd_agreement", "e2KD (Parchami-Araghi et al., ECCV 2024)", "e2kd", "kd", "agreement", "agreement", "higher"),
    ("e2kd_expl_sim", "e2KD (Parchami-Araghi et al., ECCV 2024)", "e2kd", "kd", "expl_sim", "expl_sim", "higher"),
    ("fcfd_top1", "FCFD (Liu et al., ICLR 2023)", "fcfd", "kd", "top1", "top1", "higher"),
]
UNICAM = ("unicam_epg", "UniCAM (Adhane et al., On Explaining Knowledge Distillation)", "kd", "kd",
          "unicam_epg_distilled", "unicam_epg_residual", "higher")
NON_DISTILLED = {"vanilla"}

COLUMNS = ["claim", "paper", "method", "baseline", "metric", "baseline_metric", "direction", "dataset", "teacher",
           "student", "n", "n_method", "n_baseline", "test", "method_mean", "baseline_mean", "delta", "p_value",
           "holds"]


def _series(df, method: str, metric: str):
    """Per-seed values (mean over duplicate seeds) of ``metric`` for ``method``, NaNs dropped."""
    import pandas as pd

    if metric not in df.columns:
        return pd.Series(dtype=float)
    sub = df[df["method"] == method]
    vals = pd.to_numeric(sub[metric], errors="coerce")
    s = pd.Series(vals.to_numpy(dtype=float), index=sub["seed"].to_numpy()).dropna()
    return s.groupby(level=0).mean().sort_index()


def compare(a, b, direction: str = "higher") -> dict:
    """The test of one claim row from the per-seed series ``a`` (method) and ``b``
    (baseline), indexed by seed."""
    from scipy import stats

    out = {"n": 0, "n_method": int(len(a)), "n_baseline": int(len(b)), "test": None, "method_mean": math.nan,
           "baseline_mean": math.nan, "delta": math.nan, "p_value": math.nan, "holds": None}
    if len(a) == 0 or len(b) == 0:
        return out
    common = a.index.intersection(b.index)
    if len(common) >= 2:
        x, y = a.loc[common].to_numpy(), b.loc[common].to_numpy()
        out.update(n=int(len(common)), test="paired_t")
        p = stats.ttest_rel(x, y).pvalue
    else:
        x, y = a.to_numpy(), b.to_numpy()
        out.update(n=int(min(len(x), len(y))))
        if len(x) >= 2 and len(y) >= 2:
            out["test"] = "welch_t"
            p = stats.ttest_ind(x, y, equal_var=False).pvalue
        else:
            p = math.nan
    out["method_mean"], out["baseline_mean"] = float(x.mean()), float(y.mean())
    out["delta"] = out["method_mean"] - out["baseline_mean"]
    out["p_value"] = float(p) if p is not None and not math.isnan(float(p)) else math.nan
    sign_ok = out["delta"] > 0 if direction == "higher" else out["delta"] < 0
    out["holds"] = bool(sign_ok and not math.isnan(out["p_value"]) and out["p_value"] < ALPHA)
    return out


def _row(spec, dataset, teacher, student, group) -> dict:
    claim, paper, method, baseline, metric, baseline_metric, direction = spec
    row = {"claim": claim, "paper": paper, "method": method, "baseline": baseline, "metric": metric,
           "baseline_metric": baseline_metric, "direction": direction, "dataset": dataset, "teacher": teacher,
           "student": student}
    if group is None:
        import pandas as pd

        empty = pd.Series(dtype=float)
        row.update(compare(empty, empty, direction))
    else:
        row.update(compare(_series(group, method, metric), _series(group, baseline, baseline_metric), direction))
    return row


def claims_table(runs) -> "pandas.DataFrame":
    """One row per claim × dataset × teacher/student pair (see the module docstring)."""
    import pandas as pd

    rows: List[dict] = []
    keys = ["dataset", "teacher", "student"]
    if runs is None or len(runs) == 0 or any(k not in runs.columns for k in keys + ["method", "seed"]):
        for spec in CLAIMS + [UNICAM]:
            rows.append(_row(spec, None, None, None, None))
        return pd.DataFrame(rows, columns=COLUMNS)
    runs = runs.copy()
    for k in keys:  # vanilla rows may carry an empty teacher; they belong to the pair they are listed under
        runs[k] = runs[k].astype(object)
    for (dataset, teacher, student), group in runs.groupby(keys, sort=True, dropna=False):
        for spec in CLAIMS:
            rows.append(_row(spec, dataset, teacher, student, group))
        methods = [UNICAM[2]] + sorted(m for m in group["method"].dropna().unique()
                                       if m not in NON_DISTILLED and m != UNICAM[2])
        for m in methods:
            rows.append(_row(UNICAM[:2] + (m, m) + UNICAM[4:], dataset, teacher, student, group))
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["holds"] = out["holds"].astype(object)
    return out
