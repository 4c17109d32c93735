"""Named, discoverable building blocks (detectron2's ``Registry`` in miniature).

A registry maps a name to a callable. The contract of what a registered callable must accept and
return lives in the registry's ``contract`` text and in each callable's docstring. Registering a
name twice is an error, and looking up an unknown name is an error that lists the known ones, so
that a typo in a grid YAML fails before anything runs.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, TypeVar

T = TypeVar("T", bound=Callable)


class UnknownNameError(KeyError):
    """A name that no registry entry has; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


class Registry:
    """A name → callable (or object) table with loud duplicate and unknown-name errors."""

    def __init__(self, kind: str, contract: str) -> None:
        self.kind = kind
        self.contract = contract
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register()`` uses the function's name, or pass ``name``."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._entries:
                old = self._entries[key]
                owner = getattr(old, "__qualname__", type(old).__qualname__)
                raise ValueError(f"{self.kind} {key!r} is already registered (by {old.__module__}.{owner})")
            self._entries[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
