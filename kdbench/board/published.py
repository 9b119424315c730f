"""Published numbers beside ours: ``params/published/<dataset>.yaml``.

Each file holds ``entries``: ``{dataset, teacher, student, method, top1, source,
selection, runs, note}``, ``top1`` in percent as the papers print it (the board's CSVs
keep fractions, so it is divided by 100 here). ``method: teacher`` is the teacher's
accuracy as the source reports it (its ``student`` may be omitted). Where several entries
name the same row, the first one is shown (the file's order is the curator's preference).

For every board row with a published value the board adds ``published_top1``,
``published_source``, ``published_selection``, ``published_runs``,
``delta_vs_published`` = our top1_mean − published, with ``_ci_lo`` / ``_ci_hi`` the
95 % t-interval of our mean shifted by the published value, and ``reproduces``: the
published value lies inside that interval (empty with fewer than two seeds).
An entry with ``like_for_like: false`` (the same architecture family under another recipe)
is shown with its Δ but no verdict (``published_kind``: "reference (other recipe)").
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from kdbench.board import stats
from kdbench.board.records import teacher_values
from kdbench.errors import KDBenchError

DEFAULT_DIR = Path("params") / "published"
COLUMNS = ["published_top1", "published_source", "published_selection", "published_runs", "published_kind",
           "delta_vs_published", "delta_vs_published_ci_lo", "delta_vs_published_ci_hi", "reproduces"]
#: an entry with ``like_for_like: false`` is a reference for the architecture family under
#: another recipe (resolution, data, schedule): shown beside ours, never a reproduction verdict
REFERENCE_ONLY = "reference (other recipe)"
REQUIRED = ("dataset", "teacher", "method", "top1", "source")


def load(datasets: Sequence[str], directory: Optional[Path] = None) -> list:
    """The entries of ``<directory>/<dataset>.yaml`` for each dataset that has one."""
    import yaml

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    out = []
    for d in datasets:
        path = directory / f"{d}.yaml"
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise KDBenchError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise KDBenchError(f"{path}: expected a mapping with a list 'entries' of "
                               "{dataset, teacher, student, method, top1, source, ...}")
        for i, e in enumerate(entries):
            missing = [k for k in REQUIRED if not isinstance(e, dict) or e.get(k) is None]
            if missing:
                raise KDBenchError(f"{path}: entry {i} lacks {', '.join(missing)} (needed: {', '.join(REQUIRED)})")
            top1 = e["top1"]
            if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
                raise KDBenchError(f"{path}: entry {i} has top1 {top1!r}; expected a percentage in [0, 100]")
            if str(e["dataset"]) != d:
                continue
            out.append(dict(e))
    return out


def _match(entries, dataset, teacher, student, method):
    for e in entries:
        if str(e["dataset"]) != dataset or str(e["teacher"]) != teacher or str(e["method"]) != method:
            continue
        if method == "teacher" and e.get("student") in (None, student):
            return e
        if str(e.get("student")) == student:
            return e
    return None


def attach(board, runs, entries) -> None:
    """Add the published columns to ``board`` in place (empty where nothing is published)."""
    import pandas as pd

    for c in COLUMNS:
        board[c] = pd.Series([math.nan] * len(board), index=board.index, dtype=object if c in (
            "published_source", "published_selection", "published_runs", "published_kind", "reproduces") else "float64")
    if not entries:
        return
    for i, row in board.iterrows():
        e = _match(entries, row["dataset"], row["teacher"], row["student"], row["method"])
        if e is None:
            continue
        pub = float(e["top1"]) / 100.0
        values = _row_values(runs, row)
        mean, lo, hi = stats.mean_ci(values)
        board.at[i, "published_top1"] = pub
        board.at[i, "published_source"] = str(e["source"])
        board.at[i, "published_selection"] = None if e.get("selection") is None else str(e["selection"])
        board.at[i, "published_runs"] = None if e.get("runs") is None else str(e["runs"])   # a count or "unknown"
        board.at[i, "delta_vs_published"] = mean - pub
        like_for_like = e.get("like_for_like", True) is not False
        board.at[i, "published_kind"] = "like for like" if like_for_like else REFERENCE_ONLY
        if like_for_like and not math.isnan(lo):
            board.at[i, "delta_vs_published_ci_lo"] = lo - pub
            board.at[i, "delta_vs_published_ci_hi"] = hi - pub
            board.at[i, "reproduces"] = bool(lo <= pub <= hi)


def _row_values(runs, row):
    """Our per-seed top-1 values of a board row (the teacher row: one per teacher seed)."""
    cell = ((runs["dataset"] == row["dataset"]) & (runs["teacher"] == row["teacher"])
            & (runs["student"] == row["student"]))
    if row["method"] == "teacher":
        tv = teacher_values(runs[cell])
        return tv["top1"].tolist() if "top1" in tv else []
    return stats.series(runs[cell], row["method"], "top1").tolist()


def scorecard(board):
    """One row per board row with a published value: ours (mean and CI), published, Δ,
    and the outcome: ``reproduces`` (published inside our 95 % CI), ``below`` / ``above``
    (our CI entirely below / above it) or ``no CI`` (fewer than two seeds)."""
    import pandas as pd

    cols = ["dataset", "teacher", "student", "method", "top1_mean", "published_top1", "delta_vs_published",
            "delta_vs_published_ci_lo", "delta_vs_published_ci_hi", "outcome", "published_source"]
    if "published_top1" not in board.columns:
        return pd.DataFrame(columns=cols)
    sub = board[board["published_top1"].notna()].copy()
    out = []
    for _, r in sub.iterrows():
        lo, hi = r["delta_vs_published_ci_lo"], r["delta_vs_published_ci_hi"]
        if r.get("published_kind") == REFERENCE_ONLY:
            outcome = REFERENCE_ONLY
        elif stats.isnan(lo) or stats.isnan(hi):
            outcome = "no CI"
        elif lo <= 0 <= hi:
            outcome = "reproduces"
        else:
            outcome = "below" if hi < 0 else "above"
        out.append({**{c: r[c] for c in cols if c != "outcome"}, "outcome": outcome})
    return pd.DataFrame(out, columns=cols)
