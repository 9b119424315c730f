"""Errors that name the bad value and the valid choices."""
from __future__ import annotations

import difflib
from typing import Iterable


class KDBenchError(Exception):
    """Base class of kdbench's user-facing errors (bad input, missing data)."""


class UnknownChoiceError(KDBenchError, ValueError):
    """An unknown name (method, arch, dataset, key...): says what was asked, the valid
    choices, and the closest match when there is one."""

    def __init__(self, kind: str, value: object, choices: Iterable[str], hint: str = ""):
        self.kind, self.value = kind, value
        self.choices = sorted(str(c) for c in choices)
        close = difflib.get_close_matches(str(value), self.choices, n=1, cutoff=0.6)
        self.suggestion = close[0] if close else None
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
