"""Errors that name the bad value and the valid choices."""
from __future__ import annotations

import difflib
from typing import Iterable


def closest(value: str, choices: Iterable[str], cutoff: float = 0.6):
    """The closest choice (difflib ratio); ties go to the longest common prefix, so that
    'resnet21' suggests 'resnet20' rather than 'resnet32'."""
    import os

    scored = []
    for c in choices:
        m = difflib.SequenceMatcher(None, value, c)
        if m.real_quick_ratio() >= cutoff and m.quick_ratio() >= cutoff and m.ratio() >= cutoff:
            scored.append((m.ratio(), len(os.path.commonprefix([value, c])), c))
    if not scored:
        return None
    best = max(r for r, _, _ in scored)
    return max((p, -i, c) for i, (r, p, c) in enumerate(scored) if r == best)[2]


class KDBenchError(Exception):
    """Base class of kdbench's user-facing errors (bad input, missing data)."""


class UnknownChoiceError(KDBenchError, ValueError):
    """An unknown name (method, arch, dataset, key...): says what was asked, the valid
    choices, and the closest match when there is one."""

    def __init__(self, kind: str, value: object, choices: Iterable[str], hint: str = ""):
        self.kind, self.value = kind, value
        self.choices = sorted(str(c) for c in choices)
        self.suggestion = closest(str(value), self.choices)
        msg = f"unknown {kind} {value!r}"
        if self.suggestion:
            msg += f" (did you mean {self.suggestion!r}?)"
        msg += f"; valid choices: {', '.join(self.choices)}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class DatasetNotFoundError(KDBenchError, FileNotFoundError):
    """A paper-scale dataset is not on disk: names where we looked and what to change."""

    def __init__(self, name: str, searched: str, setting: str):
        self.searched = searched
        super().__init__(
            f"dataset {name!r} not found: looked in {searched}. Put the files there, "
            f"or point {setting} at them"
        )
