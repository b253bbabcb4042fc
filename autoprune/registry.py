"""Name → builder registries for models, datasets and scorers."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autoprune._logging import get_logger
from autoprune.errors import ConfigError

T = TypeVar("T")


def summary_line(doc: str) -> str:
    """A docstring's first paragraph on one line (its summary, by convention one sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")


class Registry(Generic[T]):
    """A decorator registry; an unknown name raises with the known names.

    Example::

        MODELS = Registry("model")

        @MODELS.register("digits_resnet")
        def digits_resnet(...): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._renamed: dict[str, str] = {}
        self._warned: set[str] = set()

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def rename(self, old: str, new: str) -> None:
        """Accept ``old`` for the registered ``new`` for one release: :meth:`current` warns about it once."""
        self._renamed[old] = new

    def current(self, name: str) -> str:
        """``name``, or the name it was renamed to (with a warning, once per process)."""
        new = self._renamed.get(name)
        if new is None:
            return name
        if name not in self._warned:
            self._warned.add(name)
            get_logger(__name__).warning(
                "%s %r is now called %r; the old name is accepted until the next release", self.kind, name, new
            )
        return new

    def get(self, name: str) -> T:
        try:
            return self._entries[self.current(name)]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def matching(self, pattern: str = "*") -> list[str]:
        """The names matching a shell-style glob (``resnet*``, ``*mnist*``), sorted."""
        return [name for name in self.names() if fnmatch.fnmatchcase(name, pattern)]

    def describe(self, name: str) -> str:
        """The summary line of the entry's docstring."""
        return summary_line(self.get(name).__doc__ or "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._renamed

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
