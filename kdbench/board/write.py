"""Writing the board: every file of ``results/leaderboard/``, each atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

from kdbench.board.stats import isnan

BOARD_FILES = {
    "runs": "runs.csv", "board": "leaderboard.csv", "md": "leaderboard.md", "tex": "leaderboard.tex",
    "html": "leaderboard.html", "metrics": "metrics.json", "claims": "claims.csv", "claims_md": "claims.md",
    "trees": "teacher_trees.csv", "fig_accuracy": "accuracy.png", "fig_agreement": "accuracy_vs_agreement.png", "fig_ood": "ood_vs_id.png",
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


def write_board(runs, out_dir: os.PathLike, *, profile: Optional[dict] = None, figures: bool = True,
                title: str = "kdbench leaderboard", published_dir: Optional[os.PathLike] = None) -> Dict[str, Path]:
    """Write every board file to ``out_dir``; returns their paths (BOARD_FILES keys).
    ``published_dir``: where ``<dataset>.yaml`` files of published numbers are looked up
    (default params/published)."""
    from kdbench.board import published
    from kdbench.board.aggregate import aggregate
    from kdbench.board.claims import claims_table, scorecard
    from kdbench.board.render.html import render_html
    from kdbench.board.render.latex import render_latex
    from kdbench.board.render.markdown import render_claims_markdown, render_markdown
    from kdbench.board.trees import teacher_tree_table

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

    write_text(paths["runs"], csv_text(runs))
    write_text(paths["board"], csv_text(board))
    write_text(paths["claims"], csv_text(claims))
    write_text(paths["trees"], csv_text(trees))
    write_text(paths["claims_md"], render_claims_markdown(claims, card))
    write_text(paths["metrics"], json.dumps(metrics_tree(board), indent=2, sort_keys=True) + "\n")
    write_text(paths["md"], render_markdown(board, title=title, note=note, reproduction=reproduction, trees=trees))
    write_text(paths["tex"], render_latex(board, caption=title))
    fig_paths = {k: paths[k] for k in ("fig_accuracy", "fig_agreement", "fig_ood")}
    if figures:
        from kdbench import plots

        plots.accuracy_per_method(runs, fig_paths["fig_accuracy"])
        plots.accuracy_vs_agreement(board, fig_paths["fig_agreement"])
        plots.ood_vs_id(board, fig_paths["fig_ood"])
    write_text(paths["html"], render_html(board, runs, claims, fig_paths if figures else None, title=title,
                                          note=note, reproduction=reproduction, card=card, trees=trees))
    return paths
