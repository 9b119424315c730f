"""Where a board's numbers were computed, and the warning when a cell mixes places.

Every run records its provenance (:func:`kdbench.engine.runtime.provenance`; the
:data:`kdbench.board.records.PROVENANCE` columns of runs.csv). Bit-identity holds per CPU
kind (and ATen capability) and torch build, so two runs of one config on different devices
or builds may differ in their low bits, and beyond after many epochs. A run's provenance
here is :func:`label`: its device kind, its torch / CUDA / cuDNN build, its process count
and whether ``torch.compile`` took effect. The board warns in a cell's notes
(:func:`cell_note`, leaderboard.csv ``cell_notes``) and ``kdbench compare`` on a pair
(:func:`pair_note`) when the runs involved have more than one.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from kdbench.board.records import CELL
from kdbench.board.stats import isnan

UNKNOWN = "not recorded"
NOTE = ("bit-identity holds per CPU kind and torch build, so these rows may differ by where they ran as well as "
        "by method (runs.csv: device_kind, torch_version, cuda_version, cudnn_version, world_size)")


def _text(v) -> Optional[str]:
    return None if isnan(v) or v == "" else str(v)


def label(run) -> str:
    """One run's provenance in one line (:data:`UNKNOWN` for a run that records none)."""
    kind = _text(run.get("device_kind"))
    if kind is None:
        return UNKNOWN
    build = f"torch {_text(run.get('torch_version'))}"
    extras = [f"CUDA {c}" for c in [_text(run.get("cuda_version"))] if c] + \
             [f"cuDNN {c}" for c in [_text(run.get("cudnn_version"))] if c]
    if extras:
        build += f" ({', '.join(extras)})"
    world = _text(run.get("world_size"))
    procs = "" if world in (None, "1", "1.0") else f", {int(float(world))} processes"
    compiled = ", compiled" if str(run.get("compile")) in ("True", "true", "1", "1.0") else ""
    return f"{kind}, {build}{procs}{compiled}"


def counts(rows) -> Dict[str, int]:
    """How many of ``rows`` (a runs.csv frame) ran under each provenance, most first."""
    out: Dict[str, int] = {}
    for _, r in rows.iterrows():
        key = label(r)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0] == UNKNOWN, kv[0])))


def is_mixed(found: Dict[str, int]) -> bool:
    """More than one provenance, a run without one beside runs with one counted too (a
    board whose runs all predate the record is not flagged: nothing is known)."""
    return len(found) > 1


def _listing(found: Dict[str, int]) -> str:
    return "; ".join(f"{n} run(s) on {k}" if k != UNKNOWN else f"{n} run(s) {k} (trained before kdbench "
                     f"recorded provenance)" for k, n in found.items())


def cell_note(rows) -> str:
    """The cell's warning ('' when its runs share one provenance)."""
    found = counts(rows)
    return f"Mixed provenance in this cell: {_listing(found)}; {NOTE}." if is_mixed(found) else ""


def cell_notes(runs) -> Dict[Tuple[str, str, str], str]:
    """:func:`cell_note` per (dataset, teacher, student), only the cells that have one."""
    out = {}
    for cell, g in runs.groupby(CELL, sort=False, dropna=False):
        note = cell_note(g)
        if note:
            out[tuple(cell)] = note
    return out


def pair_note(rows, method: str, other: str) -> str:
    """``kdbench compare``'s warning for one comparison in one cell ('' when the two
    methods' runs share one provenance)."""
    sub = rows[rows["method"].isin([method, other])]
    found = counts(sub)
    if not is_mixed(found):
        return ""
    per = {m: counts(sub[sub["method"] == m]) for m in (method, other)}
    return (f"runs of different provenance paired: {method}: {_listing(per[method])}; "
            f"{other}: {_listing(per[other])} ({NOTE})")
