"""Published numbers beside ours: ``params/published/<dataset>.yaml``.

Each file holds ``entries``: ``{dataset, teacher, student, method, top1, source,
selection, runs, note}``, ``top1`` in percent as the papers print it (the board's CSVs
keep fractions, so it is divided by 100 here). ``method: teacher`` is the teacher's
accuracy as the source reports it (its ``student`` may be omitted). Where several entries
name the same row, the first one is shown (the file's order is the curator's preference).

``selection`` says which epoch the published number is from: ``last`` (the last epoch),
``best`` (the best epoch on the test split, as papers without a validation split select)
or ``unknown`` (also when missing). It is compared with our number OF THE SAME SELECTION
(:data:`OURS_METRIC`): ``last`` and ``unknown`` with ``top1`` (our last epoch: kdbench's
protocol; for ``unknown`` the scorecard says that the published selection is not known),
``best`` with ``top1_best_test`` (the max over epochs of our test top-1, recorded only
with the recipe's ``test_every_epoch``: the like-for-like yardstick for such papers, never
a ranking metric). Without it the row has no number of ours, no Δ and no verdict, and
the scorecard says so ("not recorded").

For every board row with a published value the board adds ``published_top1``,
``published_source``, ``published_selection``, ``published_runs``,
``published_compared_with`` (our metric of the same selection), ``published_ours`` with
``_ci_lo`` / ``_ci_hi`` (our mean of it over seeds and its 95 % t-interval),
``delta_vs_published`` = ours − published, with ``_ci_lo`` / ``_ci_hi`` our interval
shifted by the published value, and ``reproduces``: the published value lies inside that
interval (empty with fewer than two seeds).
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
           "delta_vs_published", "delta_vs_published_ci_lo", "delta_vs_published_ci_hi", "reproduces",
           "published_compared_with", "published_ours", "published_ours_ci_lo", "published_ours_ci_hi"]
TEXT_COLUMNS = ("published_source", "published_selection", "published_runs", "published_kind", "reproduces",
                "published_compared_with")
#: a published selection -> our number of the same selection (the runs.csv metric)
OURS_METRIC = {"last": "top1", "best": "top1_best_test", "unknown": "top1"}
#: how the scorecard names our number, per published selection
OURS_TEXT = {"last": "top1, last epoch",
             "best": "top1_best_test, best epoch on test (like-for-like only, never ranked)",
             "unknown": "top1, last epoch (the published selection is unknown)"}
#: the outcome of a ``best`` entry whose runs did not score the test split every epoch
NOT_RECORDED = "not recorded"
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
            selection = e.get("selection", "unknown")
            if selection is not None and str(selection) not in OURS_METRIC:
                raise KDBenchError(f"{path}: entry {i} has selection {selection!r}; expected one of "
                                   f"{', '.join(OURS_METRIC)} (best = the best epoch on the test split)")
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


def selection_of(entry) -> str:
    """An entry's selection (``unknown`` when it does not say)."""
    sel = entry.get("selection")
    return "unknown" if sel is None else str(sel)


def attach(board, runs, entries) -> None:
    """Add the published columns to ``board`` in place (empty where nothing is published)."""
    import pandas as pd

    for c in COLUMNS:
        board[c] = pd.Series([math.nan] * len(board), index=board.index,
                             dtype=object if c in TEXT_COLUMNS else "float64")
    if not entries:
        return
    for i, row in board.iterrows():
        e = _match(entries, row["dataset"], row["teacher"], row["student"], row["method"])
        if e is None:
            continue
        pub, selection = float(e["top1"]) / 100.0, selection_of(e)
        metric = OURS_METRIC[selection]
        mean, lo, hi = stats.mean_ci(_row_values(runs, row, metric))
        board.at[i, "published_top1"] = pub
        board.at[i, "published_source"] = str(e["source"])
        board.at[i, "published_selection"] = selection
        board.at[i, "published_runs"] = None if e.get("runs") is None else str(e["runs"])   # a count or "unknown"
        board.at[i, "published_compared_with"] = metric
        board.at[i, "published_ours"], board.at[i, "published_ours_ci_lo"] = mean, lo
        board.at[i, "published_ours_ci_hi"] = hi
        board.at[i, "delta_vs_published"] = mean - pub
        like_for_like = e.get("like_for_like", True) is not False
        board.at[i, "published_kind"] = "like for like" if like_for_like else REFERENCE_ONLY
        if like_for_like and not math.isnan(lo):
            board.at[i, "delta_vs_published_ci_lo"] = lo - pub
            board.at[i, "delta_vs_published_ci_hi"] = hi - pub
            board.at[i, "reproduces"] = bool(lo <= pub <= hi)


def _row_values(runs, row, metric: str = "top1"):
    """Our per-seed values of ``metric`` of a board row (the teacher row: one per teacher seed)."""
    cell = ((runs["dataset"] == row["dataset"]) & (runs["teacher"] == row["teacher"])
            & (runs["student"] == row["student"]))
    if row["method"] == "teacher":
        tv = teacher_values(runs[cell])
        return pd_list(tv[metric]) if metric in tv else []
    return pd_list(stats.series(runs[cell], row["method"], metric))


def pd_list(values) -> list:
    """A column's values as floats, empty ones left out."""
    return [float(v) for v in values if not stats.isnan(v)]


def _outcome(r) -> str:
    lo, hi = r["delta_vs_published_ci_lo"], r["delta_vs_published_ci_hi"]
    if r.get("published_kind") == REFERENCE_ONLY:
        return REFERENCE_ONLY
    if stats.isnan(r.get("published_ours")):
        return NOT_RECORDED if r.get("published_selection") == "best" else "no data"
    if stats.isnan(lo) or stats.isnan(hi):
        return "no CI"
    if lo <= 0 <= hi:
        return "reproduces"
    return "below" if hi < 0 else "above"


def scorecard(board):
    """One row per board row with a published value: the published value, its selection
    and number of runs; our number of the same selection (``ours_metric``, mean and 95 %
    CI); Δ; and the outcome: ``reproduces`` (published inside our 95 % CI), ``below`` /
    ``above`` (our CI entirely below / above it), ``no CI`` (fewer than two seeds),
    ``not recorded`` (a best-on-test entry, and our runs did not score the test split
    every epoch) or ``reference (other recipe)``."""
    import pandas as pd

    cols = ["dataset", "teacher", "student", "method", "published_top1", "published_selection", "published_runs",
            "ours_metric", "ours_mean", "ours_ci_lo", "ours_ci_hi", "delta_vs_published",
            "delta_vs_published_ci_lo", "delta_vs_published_ci_hi", "outcome", "published_source"]
    if "published_top1" not in board.columns:
        return pd.DataFrame(columns=cols)
    out = []
    for _, r in board[board["published_top1"].notna()].iterrows():
        out.append({**{c: r[c] for c in cols if c in r.index}, "ours_metric": r["published_compared_with"],
                    "ours_mean": r["published_ours"], "ours_ci_lo": r["published_ours_ci_lo"],
                    "ours_ci_hi": r["published_ours_ci_hi"], "outcome": _outcome(r)})
    return pd.DataFrame(out, columns=cols)
