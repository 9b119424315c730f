"""The leaderboard's figures (seaborn, imported here only, on the Agg backend).

- :func:`accuracy_per_method`: top-1 per method with std-over-seeds error bars and the
  seeds as dots, one panel per dataset and pair;
- :func:`accuracy_vs_agreement`: top-1 against teacher-student agreement;
- :func:`ood_vs_id`: out-of-distribution against in-distribution top-1.

Each writes one PNG atomically; a figure whose metric applies to no row says so instead
of being left out, so that the set of files is always the same.
"""
from __future__ import annotations

import os
from pathlib import Path

DPI = 110


def _setup():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return plt, sns


def _save(fig, path: os.PathLike) -> Path:
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def _empty(path: os.PathLike, message: str) -> Path:
    plt, _ = _setup()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#5a6578")
    return _save(fig, path)


def _palette(methods):
    """The same colour for a method in every figure (by sorted name)."""
    import seaborn as sns

    names = sorted(set(methods))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def _cell_label(df):
    return df["dataset"].astype(str) + ": " + df["teacher"].astype(str) + " → " + df["student"].astype(str)


def accuracy_per_method(runs, path: os.PathLike) -> Path:
    """Per dataset and pair: mean top-1 (%) per method (bars, best first), error bars =
    std over seeds, dots = the seeds."""
    import pandas as pd

    df = runs.dropna(subset=["top1"]).copy()
    if df.empty:
        return _empty(path, "no top-1 accuracy to plot")
    plt, sns = _setup()
    df["top1 (%)"] = df["top1"] * 100
    df["cell"] = _cell_label(df)
    cells = list(dict.fromkeys(df["cell"]))
    n_methods = df["method"].nunique()
    ncols = min(len(cells), 2)
    nrows = -(-len(cells) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 0.34 * n_methods * nrows + 1.4 * nrows),
                             squeeze=False)
    palette = _palette(df["method"])
    for ax, cell in zip(axes.flat, cells):
        g = df[df["cell"] == cell]
        order = g.groupby("method")["top1 (%)"].mean().sort_values(ascending=False).index.tolist()
        sns.barplot(data=g, x="top1 (%)", y="method", order=order, hue="method", palette=palette, legend=False,
                    errorbar="sd", capsize=0.25, err_kws={"linewidth": 1.2}, ax=ax, alpha=0.85)
        sns.stripplot(data=g, x="top1 (%)", y="method", order=order, color="#1d2433", size=3.5, ax=ax, jitter=0.15)
        lo = max(0.0, float(g["top1 (%)"].min()) - 5.0)
        hi = min(100.0, float(g["top1 (%)"].max()) + 3.0)
        ax.set_xlim(lo, hi if hi > lo else lo + 1)
        ax.set_title(cell, fontsize=10)
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.suptitle("Top-1 per method (bars: mean, whiskers: std over seeds, dots: seeds)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _scatter(board, x: str, y: str, xlabel: str, ylabel: str, title: str, path: os.PathLike,
             diagonal: bool = False, empty: str = "nothing to plot") -> Path:
    df = board.dropna(subset=[x, y]).copy()
    if df.empty:
        return _empty(path, empty)
    plt, sns = _setup()
    df[xlabel] = df[x] * 100
    df[ylabel] = df[y] * 100
    df["pair"] = df["teacher"].astype(str) + "→" + df["student"].astype(str)
    df["dataset / pair"] = df["dataset"].astype(str) + ": " + df["pair"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    palette = _palette(df["method"])
    sns.scatterplot(data=df, x=xlabel, y=ylabel, hue="method", hue_order=list(palette), style="dataset / pair",
                    s=70, ax=ax, palette=palette)
    if diagonal:
        lo = float(min(df[xlabel].min(), df[ylabel].min())) - 2
        hi = float(max(df[xlabel].max(), df[ylabel].max())) + 2
        ax.plot([lo, hi], [lo, hi], ls="--", color="#8a94a6", lw=1, zorder=0)
    ax.set_title(title, fontsize=11)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_agreement(board, path: os.PathLike) -> Path:
    return _scatter(board, "agreement_mean", "top1_mean", "agreement with the teacher (%)", "top-1 (%)",
                    "Accuracy vs teacher-student agreement (mean over seeds)", path,
                    empty="no agreement measured on these runs")


def ood_vs_id(board, path: os.PathLike) -> Path:
    return _scatter(board, "top1_mean", "top1_ood_mean", "in-distribution top-1 (%)", "OOD top-1 (%)",
                    "Out-of-distribution vs in-distribution accuracy (mean over seeds; dashed: equal)", path,
                    diagonal=True, empty="no dataset of this board has an OOD split")
