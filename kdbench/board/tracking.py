"""The board as one MLflow run: headline metrics per row and every board file as an artifact."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict

from kdbench.board.stats import isnan
from kdbench.tracking import Tracker, sync_spools

LOGGED = ("top1_mean", "delta_vs_kd", "delta_vs_kd_ci_lo", "delta_vs_kd_ci_hi", "delta_vs_vanilla",
          "delta_vs_vanilla_ci_lo", "delta_vs_vanilla_ci_hi", "agreement_mean", "expl_sim_mean", "epg_mean",
          "fss_mean", "rs_mean", "ece_mean", "nll_mean")


def log_to_mlflow(paths: Dict[str, Path], board, profile: dict, params_path: str) -> None:
    tracking = profile.get("tracking", {})
    if not tracking.get("enabled", True):
        return
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
        key = re.sub(r"[^\w./\- ]", "-", f"{row['dataset']}/{row['teacher']}__{row['student']}/{row['method']}")
        for m in LOGGED:
            if m in row and not isnan(row[m]):
                metrics[f"{m}/{key}"] = float(row[m])
    tracker.log_metrics(metrics)
    tracker.log_artifacts(p for p in paths.values() if p.exists())
    tracker.finish()
