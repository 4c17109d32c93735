"""Named, discoverable building blocks (detectron2's ``Registry`` in miniature).

A registry maps a name to a callable. The contract of what a registered callable must accept and
return lives in the registry's ``contract`` text and in each callable's docstring. Registering a
name twice is an error, and looking up an unknown name is an error that lists the known ones, so
that a typo in a grid YAML fails before anything runs.

``registered_names`` answers "which names does module M register?" without importing M when it has
not been imported yet: the command-line tools check a grid's names within a second, before paying
for torch and timm (tests/test_registry.py checks it against every live registry).
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from typing import Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar

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


def registered_names(module: str, registry: str, helpers: Sequence[str] = ()) -> List[str]:
    """The names ``module`` registers in its registry ``registry`` (a module-level variable).

    An imported module answers from the live registry (which also holds names registered at run
    time). Otherwise the source is read, not run: ``@REGISTRY.register()`` on a def or class (its
    name), ``REGISTRY.register("name")`` and calls of the module's own registering ``helpers``
    with a string first argument (``register_post_trick("gf")``)."""
    if module in sys.modules:
        return getattr(sys.modules[module], registry).names()
    return _declared_names(module, registry, tuple(helpers))


@functools.lru_cache(maxsize=None)
def _declared_names(module: str, registry: str, helpers: Tuple[str, ...]) -> List[str]:
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read(), spec.origin)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and _is_register(deco.func, registry) and not deco.args:
                    names.add(node.name)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if _is_register(func, registry) or isinstance(func, ast.Name) and func.id in helpers:
                names.add(node.args[0].value)
    return sorted(names)


def _is_register(func: ast.expr, registry: str) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name)
            and func.value.id == registry)
