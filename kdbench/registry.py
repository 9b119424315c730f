"""A small name -> factory registry (timm's ``create_model`` style)."""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from kdbench.errors import UnknownChoiceError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """``reg.register("x", f)`` or as a decorator ``@reg.register("x")``."""

        def add(o: T) -> T:
            if name in self._entries and self._entries[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownChoiceError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
