"""The seed papers' claims as statistical tests over seeds, and their scorecard.

``claims_table(runs)`` takes the per-seed runs table and returns one row per claim x
dataset x teacher/student pair:

| claim | paper | method | baseline | metric | the claim |
| --- | --- | --- | --- | --- | --- |
| tdd_decision | TDD (Song et al., CVPR 2021) | tdd | kd | decision_consistency | higher |
| cid_ood | CID (Deng & Zhang, NeurIPS 2021) | cid | kd | top1_ood | higher |
| e2kd_agreement | e2KD (Parchami-Araghi et al., ECCV 2024) | e2kd | kd | agreement | higher |
| e2kd_expl_sim | e2KD | e2kd | kd | expl_sim | higher |
| fcfd_top1 | FCFD (Liu et al., ICLR 2023) | fcfd | kd | top1 | higher |
| unicam_epg | UniCAM (Adhane et al.) | kd and every other distilled method | same runs | unicam_epg_distilled vs unicam_epg_residual | higher |

Test (:func:`kdbench.board.stats.difference`): a paired t-test and paired 95 % CI over
the seeds both sides have (the UniCAM claim compares two metrics of the same runs, so it
always pairs) when at least two seeds pair up, else Welch's test over all seeds; ``n`` is
the number of paired seeds (or the smaller side for Welch), ``test`` says which.

Correction: Holm within the family **"every claim test of one cell (dataset x pair)"**,
the UniCAM per-method rows included (``p_holm``).

Verdict (:func:`kdbench.board.stats.verdict`): ``holds`` / ``refuted`` when p_holm < 0.05
and Δ = method − baseline has / has not the claimed sign; ``inconclusive`` otherwise (the
95 % CI straddles 0, or excludes 0 only before the correction); ``no data`` when a side
has no values. ``holds`` (bool) = verdict == "holds" (None without a test).

UniCAM: the paper's claim ("distilled features sit on the object, residual ones on the
background") is about KD in general; claims.csv has the ``kd`` row (always, n = 0 when
missing) and one row per other distilled method. The scorecard folds them into one
entry per cell: "k of m methods hold", verdict by majority of the m tested methods
(holds when more than half hold, refuted when more than half are refuted, else
inconclusive).
"""
from __future__ import annotations

import math
from typing import List

from kdbench.board import stats

ALPHA = stats.ALPHA

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

#: what each claim says, in one line (the scorecard's first column)
STATEMENTS = {
    "tdd_decision": "TDD: decisions more consistent across stages than KD",
    "cid_ood": "CID: higher out-of-distribution top-1 than KD",
    "e2kd_agreement": "e2KD: higher agreement with the teacher than KD",
    "e2kd_expl_sim": "e2KD: explanations closer to the teacher's than KD",
    "fcfd_top1": "FCFD: higher top-1 than KD",
    "unicam_epg": "UniCAM: distilled features on the object more than residual ones (EPG)",
}

COLUMNS = ["claim", "paper", "method", "baseline", "metric", "baseline_metric", "direction", "dataset", "teacher",
           "student", "n", "n_method", "n_baseline", "test", "method_mean", "baseline_mean", "delta", "ci_lo",
           "ci_hi", "p_value", "p_holm", "verdict", "holds"]


def compare(a, b, direction: str = "higher") -> dict:
    """The test of one claim row from the per-seed series ``a`` (method) and ``b``
    (baseline), indexed by seed (uncorrected: ``p_holm`` / ``verdict`` come per family)."""
    d = stats.difference(a, b)
    return {"n": d["n"], "n_method": d["n_a"], "n_baseline": d["n_b"], "test": d["test"],
            "method_mean": d["a_mean"], "baseline_mean": d["b_mean"], "delta": d["delta"], "ci_lo": d["ci_lo"],
            "ci_hi": d["ci_hi"], "p_value": d["p_value"]}


def _row(spec, dataset, teacher, student, group) -> dict:
    import pandas as pd

    claim, paper, method, baseline, metric, baseline_metric, direction = spec
    row = {"claim": claim, "paper": paper, "method": method, "baseline": baseline, "metric": metric,
           "baseline_metric": baseline_metric, "direction": direction, "dataset": dataset, "teacher": teacher,
           "student": student}
    if group is None:
        empty = pd.Series(dtype=float)
        row.update(compare(empty, empty, direction))
    else:
        row.update(compare(stats.series(group, method, metric), stats.series(group, baseline, baseline_metric),
                           direction))
    return row


def _decide(rows: List[dict]) -> None:
    """Holm within one cell's rows, then the verdicts."""
    for r, p in zip(rows, stats.holm([r["p_value"] for r in rows])):
        r["p_holm"] = p
        r["verdict"] = stats.verdict(r["delta"], p, r["direction"])
        r["holds"] = None if stats.isnan(r["p_value"]) else r["verdict"] == "holds"


def claims_table(runs):
    """One row per claim x dataset x teacher/student pair (see the module docstring)."""
    import pandas as pd

    rows: List[dict] = []
    keys = ["dataset", "teacher", "student"]
    if runs is None or len(runs) == 0 or any(k not in runs.columns for k in keys + ["method", "seed"]):
        block = [_row(spec, None, None, None, None) for spec in CLAIMS + [UNICAM]]
        _decide(block)
        return pd.DataFrame(block, columns=COLUMNS)
    runs = runs.copy()
    for k in keys:  # vanilla rows may carry an empty teacher; they belong to the pair they are listed under
        runs[k] = runs[k].astype(object)
    for (dataset, teacher, student), group in runs.groupby(keys, sort=False, dropna=False):
        block = [_row(spec, dataset, teacher, student, group) for spec in CLAIMS]
        methods = [UNICAM[2]] + sorted(m for m in group["method"].dropna().unique()
                                       if m not in NON_DISTILLED and m != UNICAM[2])
        block += [_row(UNICAM[:2] + (m, m) + UNICAM[4:], dataset, teacher, student, group) for m in methods]
        _decide(block)
        rows += block
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["holds"] = out["holds"].astype(object)
    return out


# ----------------------------------------------------------------------------- scorecard
def cell_label(dataset, teacher, student) -> str:
    return f"{dataset}: {teacher} → {student}"


def scorecard(claims) -> dict:
    """The compact view: ``{"cells": [label, ...], "rows": [{"claim", "statement", "paper",
    "metric", "entries": {label: entry}}]}``; an entry is ``{"delta", "ci_lo", "ci_hi",
    "verdict", "detail"}`` (UniCAM: ``detail`` = "k of m methods hold", delta / CI those of
    its ``kd`` row)."""
    cells: List[str] = []
    rows: List[dict] = []
    if claims is None or len(claims) == 0:
        return {"cells": cells, "rows": rows}
    for _, r in claims.iterrows():
        if r["dataset"] is None or (isinstance(r["dataset"], float) and math.isnan(r["dataset"])):
            continue
        label = cell_label(r["dataset"], r["teacher"], r["student"])
        if label not in cells:
            cells.append(label)
    for spec in CLAIMS + [UNICAM]:
        claim = spec[0]
        sub = claims[claims["claim"] == claim]
        row = {"claim": claim, "statement": STATEMENTS.get(claim, claim), "paper": spec[1], "metric": spec[4],
               "entries": {}}
        for label in cells:
            here = sub[[cell_label(d, t, s) == label for d, t, s in zip(sub["dataset"], sub["teacher"],
                                                                         sub["student"])]]
            if here.empty:
                continue
            if claim == UNICAM[0]:
                row["entries"][label] = _fold_unicam(here)
            else:
                e = here.iloc[0]
                row["entries"][label] = {"delta": e["delta"], "ci_lo": e["ci_lo"], "ci_hi": e["ci_hi"],
                                         "verdict": e["verdict"], "detail": _detail(e)}
        rows.append(row)
    return {"cells": cells, "rows": rows}


def _detail(e) -> str:
    if e["verdict"] != "inconclusive":
        return ""
    if stats.isnan(e["p_value"]):
        if not stats.isnan(e["ci_lo"]) and e["ci_lo"] == e["ci_hi"]:
            return "the same difference on every seed: no test"
        return "fewer than two seeds: no test"
    if not stats.isnan(e["ci_lo"]) and (e["ci_lo"] > 0 or e["ci_hi"] < 0):
        return "CI excludes 0 only before the Holm correction"
    return ""


def _fold_unicam(here) -> dict:
    tested = here[here["verdict"].isin(["holds", "refuted", "inconclusive"])]
    m = len(tested)
    k = int((tested["verdict"] == "holds").sum())
    r = int((tested["verdict"] == "refuted").sum())
    if m == 0:
        verdict = "no data"
    elif k > m / 2:
        verdict = "holds"
    elif r > m / 2:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    kd = here[here["method"] == UNICAM[2]]
    e = kd.iloc[0] if len(kd) else None
    detail = f"{k} of {m} methods: distilled > residual" + (f", {r} refuted" if r else "")
    return {"delta": math.nan if e is None else e["delta"], "ci_lo": math.nan if e is None else e["ci_lo"],
            "ci_hi": math.nan if e is None else e["ci_hi"], "verdict": verdict, "detail": detail,
            "folded": True}
