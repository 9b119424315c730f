"""Tuned against untuned: the cells where a method that ran with tuned hyperparameters
(``hparams_source`` "tuned (N trials, val)") is compared with one that ran with untuned
values ("paper": its params file's; "defaults": a plugin's class values). Such a Δ or
p-value does not compare like with like; the board's notes and ``kdbench compare`` say
so. A method without hyperparameters (vanilla: ``hparams`` ``{}``) has nothing to tune
and is neither.
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

from kdbench.board.records import CELL
from kdbench.board.stats import isnan

def _has_hparams(value) -> bool:
    if value is None or isnan(value):
        return False
    try:
        return bool(json.loads(value) if isinstance(value, str) else value)
    except ValueError:
        return True


def tuning_of_methods(frame) -> Dict[Tuple[str, str, str], Dict[str, Dict[str, str]]]:
    """Per cell: {"tuned": {method: source}, "untuned": {method: source}} over the rows (or
    runs) of ``frame`` (columns dataset, teacher, student, method, hparams, hparams_source);
    the teacher row and methods without hyperparameters are left out."""
    out: Dict[Tuple[str, str, str], Dict[str, Dict[str, str]]] = {}
    if "hparams_source" not in frame.columns:
        return out
    for _, r in frame.iterrows():
        src = r["hparams_source"]
        if r["method"] == "teacher" or not isinstance(src, str) or not src or not _has_hparams(r.get("hparams")):
            continue
        kind = "tuned" if src.startswith("tuned") else "untuned"
        cell = out.setdefault(tuple(r[c] for c in CELL), {"tuned": {}, "untuned": {}})
        cell[kind].setdefault(r["method"], src)
    return out


def mixed_cells(frame) -> List[dict]:
    """The cells where tuned and untuned methods meet: {"cell", "tuned", "untuned"} (each
    a {method: source} mapping), in the frame's order."""
    return [{"cell": cell, **kinds} for cell, kinds in tuning_of_methods(frame).items()
            if kinds["tuned"] and kinds["untuned"]]


def _names(methods: Dict[str, str]) -> str:
    return ", ".join(f"{m} ({s})" for m, s in methods.items())


def mixed_note(frame) -> str:
    """The board's note on tuned-vs-untuned cells ("" where every cell is of one kind)."""
    parts = [f"{c['cell'][0]} {c['cell'][1]} → {c['cell'][2]}: untuned {_names(c['untuned'])} against tuned "
             f"{_names(c['tuned'])}" for c in mixed_cells(frame)]
    if not parts:
        return ""
    return ("Warning, tuned against untuned hyperparameters (their Δ and p compare a tuned method with one on "
            "its paper values or defaults, not like with like; kdbench tune-method tunes one method into the "
            "board's tuned file): " + "; ".join(parts) + ".")


def compare_warning(frame, method: str, others=None) -> str:
    """``kdbench compare``'s warning: the cells where ``method`` and a method it is compared
    with ("others": all, where None) differ in tuning ("" where none)."""
    lines = []
    for cell, kinds in tuning_of_methods(frame).items():
        mine = "tuned" if method in kinds["tuned"] else "untuned" if method in kinds["untuned"] else None
        if mine is None:
            continue
        theirs = kinds["untuned" if mine == "tuned" else "tuned"]
        theirs = {m: s for m, s in theirs.items() if others is None or m in others}
        if theirs:
            lines.append(f"  {cell[0]}: {cell[1]} -> {cell[2]}: {method} ({kinds[mine][method]}) vs "
                         f"{_names(theirs)}")
    if not lines:
        return ""
    return "\n".join([f"warning: {method} is compared with methods tuned differently (tuned vs paper values or "
                      f"defaults: not like with like; `kdbench tune-method --method {method}` tunes it the same way, "
                      f"docs/hyperparameters.md):"] + lines)
