"""A small name -> object registry that refuses duplicates (families, spaces, presets, backends)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[Exception] = KeyError):
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda obj: self.register(name, obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise self._error(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
