"""A name -> class registry that refuses duplicate names (Lilac's register_signal convention), and the base of
its plug-ins (scores and annotators)."""
from __future__ import annotations

from typing import ClassVar, Generic, Iterator, TypeVar

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


class PlugIn:
    """What every registered plug-in declares: a name, a version (part of the run's parameters, so a new version
    recomputes), its own command-line options, and the runs the demo makes of it."""

    name: ClassVar[str]
    version: ClassVar[int] = 1

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add the plug-in's own options to its subcommand's argparse parser."""

    @classmethod
    def params_from_args(cls, args) -> dict:
        return {}

    @classmethod
    def demo_runs(cls, models: list[str]) -> list[tuple[str | None, dict]]:
        """(model, params) pairs the demo builder runs; [] keeps the plug-in out of the demo."""
        return []
