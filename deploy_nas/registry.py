"""A small name -> object registry that refuses duplicates (families, spaces, presets, dense archs, backends).

A registry may have a `loader`: called once, before the first lookup, to import the modules that register the
built-in entries (so that `FAMILIES.get("nasvit")` works without the caller importing the NASViT modules).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[Exception] = KeyError, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        loader, self._loader = self._loader, None  # once, and not again while it runs (it registers entries)
        if loader is not None:
            loader()

    def register(self, name: str, obj: T) -> T:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = obj
        return obj

    def unregister(self, name: str) -> T:
        """Remove an entry (plugins and tests that register temporary entries)."""
        return self._items.pop(name.lower())

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda obj: self.register(name, obj)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[str(name).lower()]
        except KeyError:
            shown = repr(name) if len(str(name)) <= 60 else repr(str(name)[:55]) + "..."
            raise self._error(f"unknown {self.kind} {shown}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def values(self) -> list[T]:
        return [self._items[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
