"""Writing the board: every file of ``results/leaderboard/``, each atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

from kdbench import plots
from kdbench.board import overall
from kdbench.board.render.paper import render_paper_latex
from kdbench.board.stats import isnan
from kdbench.board import published
from kdbench.board.aggregate import aggregate
from kdbench.board.claims import claims_table, scorecard
from kdbench.board.render.html import render_html
from kdbench.board.render.latex import render_latex
from kdbench.board.render.markdown import render_claims_markdown, render_markdown
from kdbench.board.trees import teacher_tree_table

BOARD_FILES = {
    "runs": "runs.csv", "board": "leaderboard.csv", "md": "leaderboard.md", "tex": "leaderboard.tex",
    "html": "leaderboard.html", "metrics": "metrics.json", "claims": "claims.csv", "claims_md": "claims.md",
    "trees": "teacher_trees.csv", "overall": "overall.csv", "profile": "performance_profile.csv",
    "paper_tex": "leaderboard_paper.tex", "fig_accuracy": "accuracy.png", "fig_agreement": "accuracy_vs_agreement.png",
    "fig_ood": "ood_vs_id.png", "fig_profile": "performance_profile.png",
}
#: the numbers metrics.json (DVC) carries per row
DVC_METRICS = ["n_seeds", "top1_mean", "top1_std", "top1_sel_mean", "top1_ood_mean", "agreement_mean",
               "expl_sim_mean", "epg_mean", "fss_mean", "rs_mean", "ece_mean", "nll_mean",
               "delta_vs_kd", "delta_vs_kd_ci_lo", "delta_vs_kd_ci_hi", "delta_vs_kd_p_holm",
               "delta_vs_vanilla", "delta_vs_vanilla_ci_lo", "delta_vs_vanilla_ci_hi", "delta_vs_vanilla_p_holm"]


def metrics_tree(board) -> dict:
    """metrics.json for DVC: dataset -> "teacher__student" -> method -> numbers (NaN left out)."""
    tree: dict = {}
    for _, row in board.iterrows():
        node = tree.setdefault(str(row["dataset"]), {}).setdefault(f"{row['teacher']}__{row['student']}", {})
        vals = {}
        for k in DVC_METRICS:
            v = row[k] if k in row else None
            if isnan(v) or v is None:
                continue
            vals[k] = int(v) if k == "n_seeds" else round(float(v), 6)
        node[str(row["method"])] = vals
    return tree


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Atomic text write (temp file + rename), with the usual permissions (mkstemp's 0600
    would make the board unreadable to others)."""
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


def data_note(runs) -> str:
    """Where each dataset's images come from (its release and checksum, as the runs'
    evaluation records name it): "Data: name: source; ..." ('' when no run says)."""
    if "dataset_source" not in runs.columns:
        return ""
    sources = {}
    for d, src in zip(runs["dataset"], runs["dataset_source"]):
        if isinstance(src, str) and src:
            sources.setdefault(str(d), src)
    return ("Data: " + "; ".join(f"{d}: {src}" for d, src in sources.items()) + ".") if sources else ""


def csv_text(frame) -> str:
    return frame.to_csv(index=False, float_format="%.6g", na_rep="")


def overall_view(runs, profile: Optional[dict], metric: str = "agreement"):
    """(overall.csv, performance_profile.csv): :mod:`kdbench.board.overall` on top-1 and,
    for the profile, on ``metric`` too."""
    import pandas as pd  # pandas: heavy, imported where used (the board package's rule)

    table = overall.overall_table(runs, profile)
    curves = [overall.performance_profile(runs, m) for m in dict.fromkeys(["top1", metric]) if m in runs.columns]
    curves = [c for c in curves if len(c)]
    return table, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["metric", "method", "delta", "fraction"]))


def _figures(runs, board, curves, paths) -> Dict[str, Path]:
    """The figures, every method in the board's one colour (plots.method_colours)."""
    colours = plots.method_colours(list(runs["method"]))
    plots.accuracy_per_method(runs, paths["fig_accuracy"], colours)
    plots.accuracy_vs_agreement(board, paths["fig_agreement"], colours)
    plots.ood_vs_id(board, paths["fig_ood"], colours)
    plots.performance_profile(curves, paths["fig_profile"], colours)
    return {k: paths[k] for k in ("fig_accuracy", "fig_agreement", "fig_ood", "fig_profile")}


def write_board(runs, out_dir: os.PathLike, *, profile: Optional[dict] = None, figures: bool = True,
                title: str = "kdbench leaderboard", published_dir: Optional[os.PathLike] = None,
                metric: str = "agreement") -> Dict[str, Path]:
    """Write every board file to ``out_dir``; returns their paths (BOARD_FILES keys).
    ``published_dir``: where ``<dataset>.yaml`` files of published numbers are looked up
    (default params/published); ``metric``: the performance profile's and the paper
    table's second metric, beside top-1."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in BOARD_FILES.items()}
    profile = profile or {}
    datasets = list(profile.get("datasets", []) or []) or list(dict.fromkeys(runs["dataset"])) if len(runs) else []
    entries = published.load(datasets, published_dir)
    board = aggregate(runs, datasets=datasets or None, pairs=profile.get("pairs"), published=entries)
    reproduction = published.scorecard(board)
    description = str(profile.get("description", "") or "").rstrip()
    note = " ".join(t for t in (description + ("." if description and description[-1] not in ".!?" else ""),
                                data_note(runs)) if t)
    trees = teacher_tree_table(runs)
    claims = claims_table(runs)
    card = scorecard(claims)

    table, curves = overall_view(runs, profile, metric)

    write_text(paths["runs"], csv_text(runs))
    write_text(paths["board"], csv_text(board))
    write_text(paths["claims"], csv_text(claims))
    write_text(paths["trees"], csv_text(trees))
    write_text(paths["overall"], csv_text(table))
    write_text(paths["profile"], csv_text(curves))
    write_text(paths["claims_md"], render_claims_markdown(claims, card))
    write_text(paths["metrics"], json.dumps(metrics_tree(board), indent=2, sort_keys=True) + "\n")
    write_text(paths["md"], render_markdown(board, title=title, note=note, reproduction=reproduction, trees=trees,
                                            overall=table, overall_note=overall.NOTE,
                                            profile_note=overall.PROFILE_NOTE))
    write_text(paths["tex"], render_latex(board, caption=title, overall=table, overall_note=overall.NOTE))
    write_text(paths["paper_tex"], render_paper_latex(runs, ("top1", metric), title=title))
    fig_paths = _figures(runs, board, curves, paths) if figures else None
    write_text(paths["html"], render_html(board, runs, claims, fig_paths, title=title, note=note,
                                          reproduction=reproduction, card=card, trees=trees, overall=table))
    return paths
