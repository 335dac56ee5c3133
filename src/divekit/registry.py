"""Name -> factory registries for models, datasets and recipes (filled by decorators)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

from divekit.errors import DivekitError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries with a registering decorator and helpful unknown-name errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise DivekitError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style pattern such as ``"lenet*"``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def items(self, pattern: str = "*") -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names(pattern)]
