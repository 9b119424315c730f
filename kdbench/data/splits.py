"""A dataset without its test splits: what a tuning trial trains and scores on (the
hyperparameter protocol selects on the validation split, docs/hyperparameters.md). Any
access to a held-out split raises, so a trial cannot read the test split by mistake.
"""
from __future__ import annotations

import dataclasses

from kdbench.errors import KDBenchError

#: the splits a tuning trial never sees
HELD_OUT = ("test", "test_ood")


class HeldOutSplits(dict):
    """A dataset's splits without the test splits: any access to one raises."""

    def _refuse(self, name):
        raise KDBenchError(f"split {name!r} is held out: a tuning trial sees only "
                           f"{', '.join(map(repr, self))} (selection is on the validation split)")

    def __getitem__(self, name):
        if name in HELD_OUT:
            self._refuse(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        if name in HELD_OUT:
            self._refuse(name)
        return super().get(name, default)


def validation_only(ds):
    """A copy of a Dataset without its test splits (and without per-split metadata of
    them): what a tuning trial trains and scores on. The test splits are never read."""
    kept = HeldOutSplits()
    for name in ("train", "val"):
        kept[name] = ds.splits[name]
    meta = {}
    for key, value in (ds.meta or {}).items():
        if isinstance(value, dict) and set(value) & set(HELD_OUT):
            value = {k: v for k, v in value.items() if k not in HELD_OUT}
        meta[key] = value
    return dataclasses.replace(ds, splits=kept, meta=meta)
