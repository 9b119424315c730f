"""The teachers' trees, measured as what they are (docs/metrics.md "TDD's tree"): one row per
teacher stage with the dendrogram purity of the true coarse groups in that stage's Ward
tree of class means, its permutation baseline (mean and 95th percentile), the Ward tree cut
at the true coarse level (ARI), and the linear probes for coarse groups vs classes (does
the coarse decision come early?). Built from the per-stage lists every run's evaluation
record carries (``runs.csv``); the teacher's numbers are the same on each of its runs, so
the first run of each dataset × teacher × teacher seed gives them."""
from __future__ import annotations

import json
from typing import List

#: runs.csv column -> teacher_trees.csv column
STAGE_COLUMNS = {"tree_purity_stages": "tree_purity", "tree_purity_chance_stages": "tree_purity_chance",
                 "tree_purity_p95_stages": "tree_purity_p95", "probe_coarse_stages": "probe_coarse",
                 "probe_fine_stages": "probe_fine"}
COLUMNS = ["dataset", "teacher", "teacher_seed", "stage", *STAGE_COLUMNS.values(), "above_chance_p95"]


def _values(cell) -> List:
    if cell is None or (isinstance(cell, float) and cell != cell):
        return []
    return json.loads(cell) if isinstance(cell, str) else list(cell)


def teacher_tree_table(runs):
    """teacher_trees.csv as a DataFrame (empty when no run has a tree: no hierarchy)."""
    import pandas as pd

    rows = []
    if len(runs) and "tree_purity_stages" in runs.columns:
        for (d, t, ts), g in runs.groupby(["dataset", "teacher", "teacher_seed"], sort=False):
            first = g.iloc[0]
            lists = {col: _values(first.get(src)) for src, col in STAGE_COLUMNS.items()}
            for stage in range(max((len(v) for v in lists.values()), default=0)):
                row = {"dataset": d, "teacher": t, "teacher_seed": int(ts), "stage": stage}
                row.update({c: (v[stage] if stage < len(v) else None) for c, v in lists.items()})
                purity, p95 = row["tree_purity"], row["tree_purity_p95"]
                row["above_chance_p95"] = None if purity is None or p95 is None else bool(purity > p95)
                rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


NOTE = ("Teacher trees (TDD): per teacher stage, the dendrogram purity of the dataset's true coarse groups in "
        "the stage's Ward tree of class means (1 = every group is a branch), its chance level (the same tree "
        "with the class labels permuted: mean and 95th percentile of 1000 permutations), and linear-probe "
        "test accuracy for the coarse groups and for the classes (coarse decisions early: coarse well above "
        "fine at an early stage). walk_partition_ari on the board is the partition TDD's purity walk trains "
        "with, not the tree's quality.")


def display(table):
    """The table as text cells for Markdown / HTML."""
    def pct(v):
        return "–" if v is None or v != v else f"{100 * float(v):.1f}"

    def num(v):
        return "–" if v is None or v != v else f"{float(v):.3f}"

    out = table[["dataset", "teacher", "teacher_seed", "stage"]].astype(str).copy()
    out["purity"] = [num(v) for v in table["tree_purity"]]
    out["chance (mean / p95)"] = [f"{num(a)} / {num(b)}" for a, b in zip(table["tree_purity_chance"],
                                                                       table["tree_purity_p95"])]
    out["above p95"] = ["–" if v is None or v != v else ("yes" if v else "no") for v in table["above_chance_p95"]]
    out["coarse probe %"] = [pct(v) for v in table["probe_coarse"]]
    out["fine probe %"] = [pct(v) for v in table["probe_fine"]]
    return out
