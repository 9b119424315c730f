"""The leaderboard: evaluated runs -> tables, figures, claims and DVC metrics.

``kdbench leaderboard`` reads the evaluation record of every student run of a profile
(``results/evals/{dataset}/{teacher}__{student}/{method}/s{seed}.json``, written by
``kdbench evaluate``), joins the run's ``metrics.json`` (epochs, config hash) and its
teacher's accuracy, and writes ``results/leaderboard/``:

- ``runs.csv``         one row per run (seed);
- ``leaderboard.csv``  one row per dataset x teacher x student x method: mean and std
  (sample std, ddof=1) over seeds of every metric, and ``delta_vs_kd`` /
  ``delta_vs_vanilla``: the row's ``top1_mean`` minus that of ``kd`` / ``vanilla`` on the
  same dataset and pair;
- ``leaderboard.md`` / ``.tex`` / ``.html`` the same, grouped by dataset and pair
  (accuracies shown in %; the CSVs keep fractions);
- ``claims.csv`` / ``claims.md`` the seed papers' claims tested on these runs
  (:func:`kdbench.claims.claims_table`);
- ``metrics.json`` the board's headline numbers, nested dataset -> pair -> method (DVC);
- ``accuracy.png``, ``accuracy_vs_agreement.png``, ``ood_vs_id.png`` (:mod:`kdbench.plots`).

A metric that does not apply (no OOD split, no masks, one seed for a std) is empty in the
CSVs and "–" in the rendered tables, never 0. ``compare`` tests one method against every
other on the same cells (Welch's t-test over seeds).

pandas, scipy and the plotting libraries are imported inside the functions.
"""
from __future__ import annotations

import html
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

KEYS = ["dataset", "teacher", "student", "method"]
CELL = ["dataset", "teacher", "student"]

#: per-seed metrics aggregated into <name>_mean / <name>_std, in board order
METRICS = [
    "top1", "top1_sel", "top1_ood", "agreement", "agreement_ood", "expl_sim", "epg",
    "fss", "rs", "rs_residual", "unicam_epg_distilled", "unicam_epg_residual",
    "decision_consistency", "hierarchy_ari", "teacher_top1", "train_s", "train_img_s", "eval_s",
]
#: constant per row (the student's size), taken from the first seed
CONSTANTS = ["params", "flops", "epochs"]
#: per-run columns of runs.csv besides KEYS and METRICS
RUN_EXTRA = ["seed", "teacher_seed", "params", "flops", "epochs", "best_epoch", "fss_stages",
             "config_hash", "dataset_fingerprint"]
#: accuracy-like columns: fractions in the CSVs, % in the rendered tables
PERCENT = {"top1", "top1_sel", "top1_ood", "agreement", "agreement_ood", "teacher_top1"}

BOARD_FILES = {
    "runs": "runs.csv", "board": "leaderboard.csv", "md": "leaderboard.md", "tex": "leaderboard.tex",
    "html": "leaderboard.html", "metrics": "metrics.json", "claims": "claims.csv", "claims_md": "claims.md",
    "fig_accuracy": "accuracy.png", "fig_agreement": "accuracy_vs_agreement.png", "fig_ood": "ood_vs_id.png",
}
#: the numbers metrics.json (DVC) carries per row
DVC_METRICS = ["n_seeds", "top1_mean", "top1_std", "top1_sel_mean", "top1_ood_mean", "agreement_mean",
               "expl_sim_mean", "epg_mean", "fss_mean", "rs_mean", "delta_vs_kd", "delta_vs_vanilla"]

#: what the rendered tables show: (column, header, kind)
DISPLAY = [
    ("method", "Method", "text"),
    ("n_seeds", "n", "int"),
    ("top1", "Top-1 %", "meanstd"),
    ("delta_vs_kd", "Δ KD", "delta"),
    ("delta_vs_vanilla", "Δ vanilla", "delta"),
    ("top1_sel_mean", "Top-1 sel %", "pct"),
    ("top1_ood_mean", "OOD %", "pct"),
    ("agreement_mean", "Agree %", "pct"),
    ("expl_sim_mean", "Expl sim", "num"),
    ("epg_mean", "EPG", "num"),
    ("fss_mean", "FSS", "num"),
    ("rs_mean", "RS", "num"),
    ("decision_consistency_mean", "Dec. cons.", "num"),
    ("params", "Params (M)", "mparams"),
    ("train_s_mean", "Train s", "sec"),
]


# ----------------------------------------------------------------------------- helpers
def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> Optional[float]:
    """A JSON number or None (NaN, None, bool and non-numbers are None)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def expected_runs(profile: dict) -> List[dict]:
    """Every student run of a profile: dataset, teacher, student, method, seed, teacher_seed."""
    out = []
    t_seed = profile.get("teacher_seed", 0)
    for dataset in profile["datasets"]:
        for pair in profile["pairs"]:
            for method in profile["methods"]:
                for seed in profile["seeds"]:
                    out.append({"dataset": dataset, "teacher": pair["teacher"], "student": pair["student"],
                                "method": method, "seed": int(seed),
                                "teacher_seed": int(seed) if t_seed is None else int(t_seed)})
    return out


def eval_path(results_dir: os.PathLike, dataset: str, teacher: str, student: str, method: str, seed: int) -> Path:
    return Path(results_dir) / "evals" / dataset / f"{teacher}__{student}" / method / f"s{seed}.json"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_records(profile: dict, results_dir: Optional[os.PathLike] = None, *, strict: bool = False) -> List[dict]:
    """The flat per-run records of a profile: the evaluation record, completed from the
    run's metrics.json (epochs, best epoch, config hash, ...) and the teacher's top-1.
    Missing evaluations are an error with ``strict``, else skipped with a warning."""
    from kdbench.config import run_paths

    root = Path(results_dir if results_dir is not None else profile.get("results_dir", "results"))
    records, missing = [], []
    for run in expected_runs(profile):
        ev_path = eval_path(root, run["dataset"], run["teacher"], run["student"], run["method"], run["seed"])
        ev = _read_json(ev_path)
        if ev is None:
            missing.append(ev_path)
            continue
        sdir = run_paths(root, "student", run["dataset"], run["student"], run["seed"],
                         teacher=run["teacher"], method=run["method"])
        train = _read_json(sdir / "metrics.json") or {}
        t_seed = ev.get("teacher_seed") if ev.get("teacher_seed") is not None else run["teacher_seed"]
        tdir = run_paths(root, "teacher", run["dataset"], run["teacher"], t_seed)
        teacher = _read_json(tdir / "metrics.json") or {}
        rec = {k: train.get(k) for k in ("epochs", "best_epoch", "config_hash", "dataset_fingerprint",
                                         "train_s", "train_img_s", "params", "top1", "top1_sel", "top1_ood")}
        rec.update({k: v for k, v in ev.items() if v is not None or k not in rec})
        rec.update({k: run[k] for k in KEYS + ["seed"]})
        rec.setdefault("teacher_seed", run["teacher_seed"])
        rec["teacher_top1"] = teacher.get("top1")
        records.append(rec)
    if missing:
        listing = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        msg = f"{len(missing)} of {len(missing) + len(records)} runs have no evaluation yet: {listing}"
        if strict:
            from kdbench.errors import KDBenchError

            raise KDBenchError(msg + " (run the pipeline: snakemake --cores all)")
        print(f"[kdbench] warning: {msg}", file=sys.stderr)
    return records


def runs_frame(records: Iterable[dict]):
    """runs.csv as a DataFrame: one row per run, the standard columns first (missing ones
    empty), any further record keys after them."""
    import pandas as pd

    records = [dict(r) for r in records]
    for r in records:
        if isinstance(r.get("fss_stages"), (list, tuple)):
            r["fss_stages"] = json.dumps([_num(v) for v in r["fss_stages"]])
        for m in METRICS:
            if m in r:
                r[m] = _num(r[m])
    base = KEYS + ["seed", "teacher_seed"] + METRICS + [c for c in RUN_EXTRA if c not in ("seed", "teacher_seed")]
    extra = sorted({k for r in records for k in r} - set(base))
    extra = [k for k in extra if not any(isinstance(r.get(k), (dict, list)) for r in records)]
    df = pd.DataFrame.from_records(records, columns=base + extra)
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    df["seed"] = pd.to_numeric(df["seed"]).astype("int64") if len(df) else df["seed"]
    return df.reset_index(drop=True)


def _ordered(values: Iterable[str], order: Optional[Sequence[str]]) -> List[str]:
    seen = list(dict.fromkeys(values))
    if not order:
        return seen
    rank = {v: i for i, v in enumerate(order)}
    return sorted(seen, key=lambda v: (rank.get(v, len(rank)), seen.index(v)))


def aggregate(runs, *, datasets: Optional[Sequence[str]] = None, pairs: Optional[Sequence] = None):
    """leaderboard.csv: one row per dataset x teacher x student x method.

    ``<metric>_mean`` / ``<metric>_std`` over seeds (NaN-aware: a seed without the metric
    does not count; all seeds without it -> empty), ``n_seeds``, the constants (params,
    flops, epochs), ``delta_vs_kd`` / ``delta_vs_vanilla`` (top1_mean minus the baseline's
    on the same dataset and pair; empty when that baseline is not on the board) and
    ``rank`` (1 = best top1_mean within the dataset and pair). Rows: datasets and pairs
    in the given (profile) order, best first within a cell."""
    import pandas as pd

    rows = []
    for key, g in runs.groupby(KEYS, sort=False, dropna=False):
        row: Dict[str, Any] = dict(zip(KEYS, key))
        row["n_seeds"] = int(g["seed"].nunique())
        for m in METRICS:
            vals = pd.to_numeric(g[m], errors="coerce").dropna()
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        for c in CONSTANTS:
            vals = g[c].dropna() if c in g else []
            row[c] = vals.iloc[0] if len(vals) else float("nan")
        rows.append(row)
    columns = (KEYS + ["n_seeds", "rank", "top1_mean", "top1_std", "delta_vs_kd", "delta_vs_vanilla"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std") if m != "top1"] + CONSTANTS)
    board = pd.DataFrame(rows, columns=[c for c in columns if c not in ("rank", "delta_vs_kd", "delta_vs_vanilla")])
    if board.empty:
        return pd.DataFrame(columns=columns)

    for base in ("kd", "vanilla"):
        ref = board[board["method"] == base].set_index(CELL)["top1_mean"]
        idx = pd.MultiIndex.from_frame(board[CELL])
        board[f"delta_vs_{base}"] = board["top1_mean"].to_numpy() - ref.reindex(idx).to_numpy()
    board["rank"] = (board.groupby(CELL, sort=False)["top1_mean"]
                     .rank(ascending=False, method="min").astype("Int64"))

    ds_order = _ordered(board["dataset"], datasets)
    pair_order = _ordered(list(zip(board["teacher"], board["student"])),
                          [tuple(p) if not isinstance(p, dict) else (p["teacher"], p["student"]) for p in pairs or []])
    board["_d"] = board["dataset"].map({d: i for i, d in enumerate(ds_order)})
    board["_p"] = [pair_order.index(p) for p in zip(board["teacher"], board["student"])]
    board["_t"] = board["top1_mean"].fillna(-1.0)
    board = board.sort_values(["_d", "_p", "_t", "method"], ascending=[True, True, False, True], kind="stable")
    return board[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- compare
def compare(runs, method: str, metric: str = "top1", others: Optional[Sequence[str]] = None):
    """METHOD against every other method on the same cells (dataset, teacher, student):
    the mean difference of ``metric`` over seeds and Welch's two-sided t-test p-value
    (empty with fewer than two seeds on a side or no variance). Rows sorted by cell, then
    by difference (largest first)."""
    import pandas as pd
    from scipy import stats

    from kdbench.errors import UnknownChoiceError

    known = sorted(runs["method"].dropna().unique())
    if method not in known:
        raise UnknownChoiceError("method on the board", method, known,
                                 hint="Add it to the profile's methods and run the pipeline first")
    if metric not in runs.columns:
        raise UnknownChoiceError("metric", metric, [m for m in METRICS if m in runs.columns])
    rows = []
    for cell, g in runs.groupby(CELL, sort=False):
        a = pd.to_numeric(g.loc[g["method"] == method, metric], errors="coerce").dropna()
        if a.empty:
            continue
        for other in _ordered(g["method"], None):
            if other == method or (others and other not in others):
                continue
            b = pd.to_numeric(g.loc[g["method"] == other, metric], errors="coerce").dropna()
            if b.empty:
                continue
            p = float("nan")
            if len(a) >= 2 and len(b) >= 2:
                with _quiet_numpy():
                    p = float(stats.ttest_ind(a.to_numpy(), b.to_numpy(), equal_var=False).pvalue)
            rows.append({"dataset": cell[0], "teacher": cell[1], "student": cell[2], "method": method,
                         "other": other, "n": len(a), "n_other": len(b), "mean": float(a.mean()),
                         "other_mean": float(b.mean()), "diff": float(a.mean() - b.mean()), "p_value": p})
    cols = ["dataset", "teacher", "student", "method", "other", "n", "n_other", "mean", "other_mean", "diff", "p_value"]
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        out["_c"] = out.groupby(CELL, sort=False).ngroup()
        out = out.sort_values(["_c", "diff"], ascending=[True, False], kind="stable").drop(columns="_c")
    return out.reset_index(drop=True)


class _quiet_numpy:
    def __enter__(self):
        import warnings

        import numpy as np

        self._np = np.seterr(all="ignore")
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        import numpy as np

        np.seterr(**self._np)
        self._w.__exit__(*exc)


def format_compare(table, metric: str = "top1", alpha: float = 0.05) -> str:
    """The compare table as aligned text, one block per cell."""
    if table.empty:
        return "no cell has both the method and another method\n"
    pct = metric in PERCENT
    scale, unit = (100.0, " (percentage points)") if pct else (1.0, "")
    method = table["method"].iloc[0]
    lines = [f"{method} vs every other method, {metric}{unit}: mean difference over seeds, Welch's t-test p"]
    wins = losses = 0
    for cell, g in table.groupby(CELL, sort=False):
        lines.append(f"\n{cell[0]}: {cell[1]} -> {cell[2]}   ({method}: {_fmt(g['mean'].iloc[0] * scale)}, "
                     f"n={g['n'].iloc[0]})")
        width = max(len(str(o)) for o in g["other"])
        for _, r in g.iterrows():
            sig = ""
            if not _isnan(r["p_value"]) and r["p_value"] < alpha:
                sig = " *"
                wins += r["diff"] > 0
                losses += r["diff"] < 0
            lines.append(f"  vs {r['other']:<{width}}  diff {r['diff'] * scale:+8.3f}   "
                         f"p {_fmt_p(r['p_value']):>8}   ({_fmt(r['other_mean'] * scale)}, n={r['n_other']}){sig}")
    lines.append(f"\n* p < {alpha}: {method} significantly better in {wins}, worse in {losses} comparisons")
    return "\n".join(lines) + "\n"


def _fmt(x, digits: int = 3) -> str:
    return "–" if _isnan(x) else f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if _isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


# ----------------------------------------------------------------------------- rendering
def _cell_display(row, col: str, kind: str) -> str:
    if kind == "text":
        return str(row[col])
    if kind == "int":
        return "–" if _isnan(row[col]) else str(int(row[col]))
    if kind == "meanstd":
        m, s = row[f"{col}_mean"], row[f"{col}_std"]
        if _isnan(m):
            return "–"
        return f"{m * 100:.2f}" + ("" if _isnan(s) else f" ± {s * 100:.2f}")
    v = row[col]
    if _isnan(v):
        return "–"
    if kind == "pct":
        return f"{v * 100:.2f}"
    if kind == "delta":
        return f"{v * 100:+.2f}"
    if kind == "mparams":
        return f"{v / 1e6:.3f}"
    if kind == "sec":
        return f"{v:.1f}"
    return f"{v:.3f}"


def _sort_value(row, col: str, kind: str):
    v = row[f"{col}_mean"] if kind == "meanstd" else row[col]
    if kind == "text":
        return str(v)
    return "" if _isnan(v) else repr(float(v))


def _cells(board):
    for (d, t, s), g in board.groupby(CELL, sort=False):
        yield d, t, s, g


def render_markdown(board, title: str = "kdbench leaderboard", note: str = "") -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["Mean ± std over seeds; accuracies in %; Δ in percentage points of top-1 against `kd` / "
              "`vanilla` on the same dataset and pair; – = does not apply. Best top-1 per table in bold.", ""]
    current = None
    for d, t, s, g in _cells(board):
        if d != current:
            lines += [f"## {d}", ""]
            current = d
        lines += [f"### {t} → {s}", ""]
        lines.append("| " + " | ".join(h for _, h, _ in DISPLAY) + " |")
        lines.append("|" + "|".join(":--" if k == "text" else "--:" for _, _, k in DISPLAY) + "|")
        best = g["top1_mean"].max()
        for _, row in g.iterrows():
            cells = [_cell_display(row, c, k).replace("|", "\\|") for c, _, k in DISPLAY]
            if not _isnan(best) and row["top1_mean"] == best:
                cells[2] = f"**{cells[2]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _tex_escape(s: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    return "".join(table.get(ch, ch) for ch in str(s))


def render_latex(board, caption: str = "kdbench leaderboard") -> str:
    """A booktabs table, one block per dataset and pair (needs \\usepackage{booktabs})."""
    heads = {"Method": "Method", "n": "$n$", "Top-1 %": "Top-1 (\\%)", "Δ KD": "$\\Delta_{\\mathrm{KD}}$",
             "Δ vanilla": "$\\Delta_{\\mathrm{van}}$", "Top-1 sel %": "Sel.\\ (\\%)", "OOD %": "OOD (\\%)",
             "Agree %": "Agree (\\%)", "Expl sim": "Expl.\\ sim", "EPG": "EPG", "FSS": "FSS", "RS": "RS",
             "Dec. cons.": "Dec.\\ cons.", "Params (M)": "Params (M)", "Train s": "Train (s)"}
    ncol = len(DISPLAY)
    lines = ["% kdbench leaderboard: mean ± std over seeds; generated by `kdbench leaderboard`",
             "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{_tex_escape(caption)}: mean $\\pm$ std over seeds; $\\Delta$ in top-1 points "
             "against KD / vanilla on the same pair; -- = does not apply.}",
             "\\resizebox{\\linewidth}{!}{%",
             "\\begin{tabular}{l" + "r" * (ncol - 1) + "}", "\\toprule",
             " & ".join(heads.get(h, _tex_escape(h)) for _, h, _ in DISPLAY) + " \\\\"]
    for d, t, s, g in _cells(board):
        lines += ["\\midrule",
                  f"\\multicolumn{{{ncol}}}{{l}}{{\\textbf{{{_tex_escape(d)}}}: "
                  f"{_tex_escape(t)} $\\rightarrow$ {_tex_escape(s)}}} \\\\", "\\midrule"]
        best = g["top1_mean"].max()
        for _, row in g.iterrows():
            cells = []
            for c, _, k in DISPLAY:
                v = _cell_display(row, c, k).replace("±", "$\\pm$").replace("–", "--")
                cells.append(_tex_escape(v) if k == "text" else v.replace("%", "\\%"))
            if not _isnan(best) and row["top1_mean"] == best:
                cells[2] = f"\\textbf{{{cells[2]}}}"
            lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
     padding:0 1rem;color:#1d2433;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin:1.4rem 0 .4rem;font-weight:600}
.note{color:#5a6578;font-size:.92rem}
table{border-collapse:collapse;font-size:.88rem;margin:.3rem 0 1rem;width:100%}
th,td{padding:.28rem .55rem;border-bottom:1px solid #e6eaef;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f3f6f9;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e3e9f0} th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
tr:hover td{background:#f8fafc} tr.best td{font-weight:650} tr.base td:first-child{color:#5a6578}
td.pos{color:#11793b} td.neg{color:#b4232a}
.holds{color:#11793b;font-weight:600} .fails{color:#b4232a;font-weight:600}
figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #e6eaef}
figcaption{color:#5a6578;font-size:.9rem}
details{margin:1rem 0} summary{cursor:pointer;font-weight:600}
nav a{margin-right:1rem}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'), y=b.cells[i].getAttribute('data-v');
        if(x===''&&y!=='') return 1; if(y===''&&x!=='') return -1;
        var nx=parseFloat(x), ny=parseFloat(y), r;
        r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?r:-r;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _html_table(frame, columns, *, css_class: str = "sortable", row_class=None) -> str:
    """columns: (column, header, kind) like DISPLAY; sortable on every column."""
    out = [f'<table class="{css_class}"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for _, h, _ in columns]
    out.append("</tr></thead><tbody>")
    for _, row in frame.iterrows():
        cls = row_class(row) if row_class else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for c, _, k in columns:
            shown = _cell_display(row, c, k)
            sort = _sort_value(row, c, k)
            tdc = ""
            if k == "delta" and not _isnan(row[c]):
                tdc = ' class="pos"' if row[c] > 0 else (' class="neg"' if row[c] < 0 else "")
            out.append(f'<td data-v="{html.escape(sort)}"{tdc}>{html.escape(shown)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(path: Path) -> str:
    import base64

    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def render_html(board, runs, claims=None, figures: Optional[Dict[str, Path]] = None,
                title: str = "kdbench leaderboard", note: str = "") -> str:
    """A self-contained page (inline CSS, JS and figures): one sortable table per dataset
    and pair, the claims, the figures, and every run."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    n_runs = len(runs)
    parts.append(f'<p class="note">{len(board)} rows from {n_runs} runs. Mean ± std over seeds (sample std); '
                 "accuracies in %; Δ = top-1 difference in points against <code>kd</code> / <code>vanilla</code> "
                 "on the same dataset and pair; – = does not apply. Click a column header to sort.</p>")
    datasets = list(dict.fromkeys(board["dataset"]))
    nav = ['<nav>'] + [f'<a href="#ds-{html.escape(d)}">{html.escape(d)}</a>' for d in datasets]
    nav += ['<a href="#claims">claims</a>', '<a href="#figures">figures</a>', '<a href="#runs">runs</a></nav>']
    parts.append("".join(nav))
    current = None
    for d, t, s, g in _cells(board):
        if d != current:
            parts.append(f'<h2 id="ds-{html.escape(d)}">{html.escape(d)}</h2>')
            current = d
        teacher_acc = g["teacher_top1_mean"].dropna()
        t_note = f" (teacher top-1 {teacher_acc.iloc[0] * 100:.2f} %)" if len(teacher_acc) else ""
        parts.append(f"<h3>{html.escape(t)} → {html.escape(s)}<span class=\"note\">{html.escape(t_note)}</span></h3>")
        best = g["top1_mean"].max()

        def row_class(row, best=best):
            cls = []
            if not _isnan(best) and row["top1_mean"] == best:
                cls.append("best")
            if row["method"] in ("vanilla", "kd"):
                cls.append("base")
            return " ".join(cls)

        parts.append(_html_table(g, DISPLAY, row_class=row_class))

    parts.append('<h2 id="claims">Claims</h2>')
    if claims is None or len(claims) == 0:
        parts.append('<p class="note">No claim could be tested on these runs.</p>')
    else:
        parts.append('<p class="note">Each seed paper\'s claim, tested on these runs: the method against its '
                     "baseline on the same cell (mean over seeds; p-value of a paired t-test over seeds, Welch's "
                     "when the seeds do not pair: the <code>test</code> column says which).</p>")
        parts.append(_claims_html(claims))

    parts.append('<h2 id="figures">Figures</h2>')
    captions = {"fig_accuracy": "Top-1 per method, error bars: std over seeds, one panel per dataset and pair.",
                "fig_agreement": "Top-1 against teacher-student agreement (mean over seeds).",
                "fig_ood": "Out-of-distribution against in-distribution top-1 (mean over seeds)."}
    for key, path in (figures or {}).items():
        img = _img(Path(path))
        if img:
            parts.append(f"<figure>{img}<figcaption>{html.escape(captions.get(key, ''))}</figcaption></figure>")

    parts.append('<h2 id="runs">Runs</h2><details><summary>every run (one row per seed)</summary>')
    run_cols = [(c, c, "text" if c in KEYS or c in ("seed", "config_hash") else "num") for c in
                KEYS + ["seed", "top1", "top1_sel", "top1_ood", "agreement", "expl_sim", "epg", "fss", "rs",
                        "train_s", "config_hash"] if c in runs.columns]
    parts.append(_html_table(runs, run_cols))
    parts.append("</details>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _claims_html(claims) -> str:
    cols = [c for c in claims.columns]
    out = ['<table class="sortable"><thead><tr>'] + [f"<th>{html.escape(str(c))}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for _, row in claims.iterrows():
        out.append("<tr>")
        for c in cols:
            v = row[c]
            if c == "holds":
                txt = "–" if _isnan(v) else ("holds" if bool(v) else "does not hold")
                cls = "" if _isnan(v) else (' class="holds"' if bool(v) else ' class="fails"')
                out.append(f"<td{cls}>{txt}</td>")
            elif isinstance(v, float):
                txt = _fmt_p(v) if c == "p_value" else _fmt(v, 4)
                out.append(f'<td data-v="{"" if _isnan(v) else v!r}">{txt}</td>')
            else:
                out.append(f"<td>{html.escape('–' if _isnan(v) else str(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_claims_markdown(claims) -> str:
    lines = ["# Claims", "", "Each seed paper's claim tested on these runs (method vs baseline on the same "
             "cell: mean over seeds; p-value of a paired t-test over seeds, Welch's when the seeds do not pair — "
             "the `test` column says which).", ""]
    if claims is None or len(claims) == 0:
        return "\n".join(lines + ["No claim could be tested on these runs.", ""])
    cols = list(claims.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("--" for _ in cols) + "|")
    for _, row in claims.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c == "holds":
                cells.append("–" if _isnan(v) else ("yes" if bool(v) else "no"))
            elif isinstance(v, float):
                cells.append(_fmt_p(v) if c == "p_value" else _fmt(v, 4))
            else:
                cells.append("–" if _isnan(v) else str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CLAIM_COLUMNS = ["claim", "paper", "method", "baseline", "metric", "dataset", "teacher", "student", "n",
                 "method_mean", "baseline_mean", "delta", "p_value", "holds"]


def claims_for(runs):
    """kdbench.claims.claims_table(runs), or an empty table when it is not available."""
    import pandas as pd

    try:
        from kdbench.claims import claims_table
    except ImportError as err:
        print(f"[kdbench] warning: claims not tested ({err})", file=sys.stderr)
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    return claims_table(runs)


def metrics_tree(board) -> dict:
    """metrics.json for DVC: dataset -> "teacher__student" -> method -> numbers (NaN left out)."""
    tree: dict = {}
    for _, row in board.iterrows():
        node = tree.setdefault(str(row["dataset"]), {}).setdefault(f"{row['teacher']}__{row['student']}", {})
        vals = {}
        for k in DVC_METRICS:
            v = row[k]
            if _isnan(v):
                continue
            vals[k] = int(v) if k == "n_seeds" else round(float(v), 6)
        node[str(row["method"])] = vals
    return tree


# ----------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write(path: Path, text: str) -> None:
    """Atomic text write (temp file + rename), with the usual permissions (mkstemp's 0600
    would make the board unreadable to others)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv(frame) -> str:
    return frame.to_csv(index=False, float_format="%.6g", na_rep="")


def write_board(runs, out_dir: os.PathLike, *, profile: Optional[dict] = None, figures: bool = True,
                title: str = "kdbench leaderboard") -> Dict[str, Path]:
    """Write every board file to ``out_dir``; returns their paths (BOARD_FILES keys)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in BOARD_FILES.items()}
    board = aggregate(runs, datasets=list((profile or {}).get("datasets", []) or []) or None,
                      pairs=(profile or {}).get("pairs"))
    note = (profile or {}).get("description", "")
    claims = claims_for(runs)

    _write(paths["runs"], _csv(runs))
    _write(paths["board"], _csv(board))
    _write(paths["claims"], _csv(claims))
    _write(paths["claims_md"], render_claims_markdown(claims))
    _write(paths["metrics"], json.dumps(metrics_tree(board), indent=2, sort_keys=True) + "\n")
    _write(paths["md"], render_markdown(board, title=title, note=note))
    _write(paths["tex"], render_latex(board, caption=title))
    fig_paths = {k: paths[k] for k in ("fig_accuracy", "fig_agreement", "fig_ood")}
    if figures:
        from kdbench import plots

        plots.accuracy_per_method(runs, fig_paths["fig_accuracy"])
        plots.accuracy_vs_agreement(board, fig_paths["fig_agreement"])
        plots.ood_vs_id(board, fig_paths["fig_ood"])
    _write(paths["html"], render_html(board, runs, claims, fig_paths if figures else None, title=title, note=note))
    return paths


def log_to_mlflow(paths: Dict[str, Path], board, profile: dict, params_path: str) -> None:
    """The board as one MLflow run: headline metrics per row and every file as an artifact."""
    import re

    from kdbench.tracking import Tracker

    tracking = profile.get("tracking", {})
    if not tracking.get("enabled", True):
        return
    from kdbench.tracking import sync_spools

    counts = sync_spools(profile["results_dir"])  # the jobs' deferred run records, then the board
    if counts["synced"] or counts["failed"]:
        print(f"MLflow: {counts['synced']} job run(s) synced, {counts['failed']} failed", file=sys.stderr)
    tracker = Tracker(enabled=True, experiment=tracking.get("experiment", "kdbench"))
    tracker.start("leaderboard", params={"params": params_path, "datasets": ",".join(profile["datasets"]),
                                         "pairs": ",".join(f"{p['teacher']}->{p['student']}" for p in profile["pairs"]),
                                         "methods": ",".join(profile["methods"]),
                                         "seeds": ",".join(map(str, profile["seeds"])), "rows": len(board)},
                  tags={"kind": "leaderboard"})
    metrics = {}
    for _, row in board.iterrows():
        key = f"{row['dataset']}/{row['teacher']}__{row['student']}/{row['method']}"
        key = re.sub(r"[^\w./\- ]", "-", key)
        for m in ("top1_mean", "delta_vs_kd", "delta_vs_vanilla", "agreement_mean", "expl_sim_mean", "epg_mean",
                  "fss_mean", "rs_mean"):
            if not _isnan(row[m]):
                metrics[f"{m}/{key}"] = float(row[m])
    tracker.log_metrics(metrics)
    tracker.log_artifacts(p for p in paths.values() if p.exists())
    tracker.finish()


def build(profile: dict, params_path: str = "params", out_dir: Optional[os.PathLike] = None, *,
          strict: bool = False, figures: bool = True, tracking: bool = True) -> Dict[str, Path]:
    """collect -> write -> log: what ``kdbench leaderboard`` does."""
    from kdbench.errors import KDBenchError

    records = collect_records(profile, strict=strict)
    if not records:
        raise KDBenchError(f"no evaluated runs of {params_path} under {profile.get('results_dir', 'results')}/evals: "
                           "run the pipeline first (snakemake --cores all)")
    runs = runs_frame(records)
    out = Path(out_dir) if out_dir is not None else Path(profile.get("results_dir", "results")) / "leaderboard"
    paths = write_board(runs, out, profile=profile, figures=figures,
                        title=f"kdbench leaderboard — {Path(params_path).stem}")
    if tracking:
        import pandas as pd

        log_to_mlflow(paths, pd.read_csv(paths["board"]), profile, params_path)
    return paths
