"""The leaderboard's figures (seaborn, imported here only, on the Agg backend).

- :func:`accuracy_per_method`: top-1 per method as a dot plot (the mean with its 95 %
  t-interval over seeds, the seeds as small dots), one panel per dataset and pair; no bars,
  so the axis can show the range the numbers need without a bar's length exaggerating a
  difference;
- :func:`accuracy_vs_agreement`: top-1 against teacher-student agreement;
- :func:`ood_vs_id`: out-of-distribution against in-distribution top-1;
- :func:`performance_profile`: the overall view's performance profiles
  (:mod:`kdbench.board.overall`), one panel per metric.

One colour per method across every figure: :func:`method_colours` of the board's methods,
passed to each (the teacher always grey). Each writes one PNG atomically; a figure whose
metric applies to no row says so instead of being left out, so that the set of files is
always the same.
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


TEACHER_COLOUR = (0.55, 0.58, 0.65)


def method_colours(methods) -> dict:
    """The board's one colour per method (by sorted name; the teacher grey): build it once
    from every method of the board and pass it to each figure."""
    import seaborn as sns

    names = sorted(set(methods) - {"teacher"})
    colours = dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))
    colours["teacher"] = TEACHER_COLOUR
    return colours


def _palette(methods, colours=None) -> dict:
    """``colours`` restricted to ``methods`` (built from ``methods`` alone when not given)."""
    colours = colours or method_colours(methods)
    return {m: colours.get(m, TEACHER_COLOUR) for m in sorted(set(methods))}


def _cell_label(df):
    return df["dataset"].astype(str) + ": " + df["teacher"].astype(str) + " → " + df["student"].astype(str)


def _mean_ci(g, methods):
    """Per method: (mean, half-width of the 95 % t-interval) of the 'top1 (%)' column."""
    import math

    from scipy import stats  # scipy: heavy, imported where used

    out = {}
    for m in methods:
        v = g.loc[g["method"] == m, "top1 (%)"].to_numpy(dtype=float)
        half = (float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
                if len(v) > 1 else 0.0)
        out[m] = (float(v.mean()), half)
    return out


def accuracy_per_method(runs, path: os.PathLike, colours=None) -> Path:
    """Per dataset and pair: mean top-1 (%) per method (best first) with its 95 % t-interval
    over seeds, and the seeds as small dots: a dot plot, its axis the range the values span."""
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
    palette = _palette(df["method"], colours)
    for ax, cell in zip(axes.flat, cells):
        g = df[df["cell"] == cell]
        order = g.groupby("method")["top1 (%)"].mean().sort_values(ascending=False).index.tolist()
        sns.stripplot(data=g, x="top1 (%)", y="method", order=order, color="#8a94a6", size=3, ax=ax, jitter=0.12,
                      alpha=0.8)
        for y, (m, (mean, half)) in enumerate(_mean_ci(g, order).items()):
            ax.errorbar(mean, y, xerr=half, fmt="o", color=palette[m], ms=7, capsize=3, lw=1.6, zorder=3)
        ax.set_title(cell, fontsize=10)
        ax.set_ylabel("")
        ax.set_xlabel("top-1 (%)")
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.suptitle("Top-1 per method (large dot: mean, whiskers: 95 % CI of the mean over seeds, small dots: seeds)",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _scatter(board, x: str, y: str, xlabel: str, ylabel: str, title: str, path: os.PathLike,
             diagonal: bool = False, empty: str = "nothing to plot", colours=None) -> Path:
    df = board.dropna(subset=[x, y]).copy()
    if df.empty:
        return _empty(path, empty)
    plt, sns = _setup()
    df[xlabel] = df[x] * 100
    df[ylabel] = df[y] * 100
    df["pair"] = df["teacher"].astype(str) + "→" + df["student"].astype(str)
    df["dataset / pair"] = df["dataset"].astype(str) + ": " + df["pair"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    palette = _palette(df["method"], colours)
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


def accuracy_vs_agreement(board, path: os.PathLike, colours=None) -> Path:
    return _scatter(board, "agreement_mean", "top1_mean", "agreement with the teacher (%)", "top-1 (%)",
                    "Accuracy vs teacher-student agreement (mean over seeds)", path,
                    empty="no agreement measured on these runs", colours=colours)


def ood_vs_id(board, path: os.PathLike, colours=None) -> Path:
    return _scatter(board, "top1_mean", "top1_ood_mean", "in-distribution top-1 (%)", "OOD top-1 (%)",
                    "Out-of-distribution vs in-distribution accuracy (mean over seeds; dashed: equal)", path,
                    diagonal=True, empty="no dataset of this board has an OOD split", colours=colours)


def performance_profile(curves, path: os.PathLike, colours=None) -> Path:
    """One panel per metric of ``curves`` (:func:`kdbench.board.overall.performance_profile`,
    concatenated): ρ(δ) as a step curve per method, best methods first in the legend."""
    if curves is None or len(curves) == 0:
        return _empty(path, "no metric to profile on these runs")
    plt, _ = _setup()
    metrics = list(dict.fromkeys(curves["metric"]))
    palette = _palette(curves["method"], colours)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics) + 1.6, 3.4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        c = curves[curves["metric"] == metric]
        top = max(float(c["delta"].max()), 1e-9) * 1.08
        area = c.groupby("method")["fraction"].mean().sort_values(ascending=False)
        for i, m in enumerate(area.index):
            mc = c[c["method"] == m]
            x = list(mc["delta"]) + [top]
            y = list(mc["fraction"]) + [float(mc["fraction"].iloc[-1])]
            ax.step(x, y, where="post", color=palette[m], lw=1.8, label=m, alpha=0.9, zorder=3 + i % 3)
        unit = " (points)" if metric in ("top1", "top1_sel", "top1_ood", "agreement", "agreement_ood") else ""
        ax.set_xlabel(f"δ: distance to the cell's best {metric}{unit}")
        ax.set_ylabel("fraction of the method's cells within δ")
        ax.set_xlim(0, top)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"Performance profile: {metric}", fontsize=10)
    axes.flat[-1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=9, frameon=False,
                         ncol=1 if len(palette) <= 16 else 2)
    fig.tight_layout()
    return _save(fig, path)
