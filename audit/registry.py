"""A name -> class registry that refuses duplicate names (Lilac's register_signal convention)."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Register a class by its ``name``; usable as a class decorator."""
        name = getattr(item, "name", None)
        if not name:
            raise ValueError(f"{self.kind} {item!r} has no name")
        if name in self._items:
            raise ValueError(f'{self.kind} "{name}" has already been registered')
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in self.names())
