"""Datasets (``build_dataset``) and the in-memory batch loader."""
from __future__ import annotations

import inspect

from kdbench.data.base import DATASETS, Dataset, FileSplit, Split, fingerprint_tensors
from kdbench.errors import UnknownChoiceError

# importing the modules registers the datasets
from kdbench.data import shapes, digits, cifar, folder, fashion_mnist  # noqa: E402,F401


def build_dataset(name: str, **options) -> Dataset:
    """Build a dataset by name. Unknown names or options raise an error naming the bad
    value and the valid choices, before any work is done."""
    factory = DATASETS.get(name)
    sig = inspect.signature(factory)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        for key in options:
            if key not in sig.parameters:
                raise UnknownChoiceError(f"option of dataset {name!r}", key, sig.parameters)
    return factory(**options)


def list_datasets() -> list[str]:
    return DATASETS.names()


__all__ = ["build_dataset", "list_datasets", "Dataset", "Split", "FileSplit", "DATASETS", "fingerprint_tensors"]
