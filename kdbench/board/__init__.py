"""The board: evaluated runs -> tables, claims, figures, DVC metrics, MLflow.

``kdbench leaderboard`` = :func:`build`: collect -> aggregate -> render -> write -> log.
A newcomer reads the modules in this order:

- :mod:`.records`    collection: the per-run records of a profile (runs.csv);
- :mod:`.stats`      paired differences over seeds with their 95 % CI, Holm's correction;
- :mod:`.aggregate`  runs.csv -> leaderboard.csv (means, stds, teacher rows, Δ vs kd /
  vanilla with CI and Holm-corrected p, hyperparameters and their source);
- :mod:`.published`  published numbers (params/published/<dataset>.yaml) beside ours;
- :mod:`.claims`     the seed papers' claims as tests, and their scorecard;
- :mod:`.overall`    the overall view across cells: mean rank with a seed bootstrap, wins /
  ties / losses vs kd and vanilla, performance profiles (overall.csv);
- :mod:`.compare`    ``kdbench compare METHOD``;
- :mod:`.render`     Markdown, LaTeX (pandas Styler; the compact paper table: render.paper), HTML;
- :mod:`.write`      every file of results/leaderboard/, atomically;
- :mod:`.tracking`   the board as one MLflow run.

A metric that does not apply (no OOD split, no masks, one seed for a std) is empty in the
CSVs and "–" in the rendered tables, never 0. Heavy imports (pandas, scipy, plotting)
happen inside the functions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from kdbench.config import layout
from kdbench.board.records import METRICS, collect_records, runs_frame
from kdbench.board.write import write_board
from kdbench.errors import KDBenchError, UnknownChoiceError
from kdbench.board.tracking import log_to_mlflow


def build(profile: dict, params_path: str = "params", out_dir: Optional[os.PathLike] = None, *,
          strict: bool = False, figures: bool = True, tracking: bool = True,
          published_dir: Optional[os.PathLike] = None, params_ref: Optional[str] = None,
          metric: str = "agreement") -> Dict[str, Path]:
    """collect -> write -> log: what ``kdbench leaderboard`` does (``metric``: the
    performance profile's second metric, checked before any work)."""
    if metric not in METRICS:
        raise UnknownChoiceError("metric", metric, METRICS)

    records = collect_records(profile, strict=strict, params=params_ref or params_path)
    if not records:
        raise KDBenchError(f"no evaluated runs of {params_path} under {profile.get('results_dir', 'results')}/evals: "
                           "run the pipeline first (snakemake --cores all)")
    runs = runs_frame(records)
    out = Path(out_dir) if out_dir is not None else layout.board_dir(profile.get("results_dir", "results"))
    paths = write_board(runs, out, profile=profile, figures=figures, published_dir=published_dir,
                        title=f"kdbench leaderboard — {Path(params_path).stem}", metric=metric)
    if tracking:
        import pandas as pd

        log_to_mlflow(paths, pd.read_csv(paths["board"]), profile, params_path)
    return paths
