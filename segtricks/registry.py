"""Named, discoverable building blocks (detectron2's ``Registry`` in miniature).

A registry maps a name to a callable. The contract of what a registered callable must accept and
return lives in the registry's ``contract`` text and in each callable's docstring. Registering a
name twice is an error, and looking up an unknown name is an error that lists the known ones, so
that a typo in a grid YAML fails before anything runs. An entry may carry literal attributes, what
a config may be checked against before the entry is built (a dataset's ``splits``).

``registered_names`` and ``registered_attributes`` answer "which names does module M register, with
which attributes?" without importing M when it has not been imported yet: the command-line tools
check a grid's names within a second, before paying for torch and timm (tests/test_registry.py
checks them against every live registry).
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, TypeVar

from segtricks.errors import BadInput

T = TypeVar("T", bound=Callable)


class UnknownNameError(BadInput, KeyError):
    """A name that no registry entry has; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


class Registry:
    """A name → callable (or object) table with loud duplicate and unknown-name errors."""

    def __init__(self, kind: str, contract: str) -> None:
        self.kind = kind
        self.contract = contract
        self._entries: Dict[str, Callable] = {}
        self._attributes: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str | None = None, **attributes: Any) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register()`` uses the function's name, or pass ``name``. Keyword
        ``attributes`` must be literals (``splits=("train", "val")``): they are read from the source too."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._entries:
                old = self._entries[key]
                owner = getattr(old, "__qualname__", type(old).__qualname__)
                raise ValueError(f"{self.kind} {key!r} is already registered (by {old.__module__}.{owner})")
            self._entries[key] = fn
            self._attributes[key] = dict(attributes)
            return fn

        return deco

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"
            ) from None

    def attributes(self, name: str) -> Dict[str, Any]:
        """The attributes ``name`` was registered with (empty when none)."""
        self.get(name)
        return dict(self._attributes[name])

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def registered_names(module: str, registry: str, helpers: Sequence[str] = ()) -> List[str]:
    """The names ``module`` registers in its registry ``registry`` (a module-level variable); see
    ``registered_attributes``."""
    return sorted(registered_attributes(module, registry, helpers))


def registered_attributes(module: str, registry: str, helpers: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Name → attributes of every name ``module`` registers in ``registry``.

    An imported module answers from the live registry (which also holds names registered at run
    time). Otherwise the source is read, not run: ``@REGISTRY.register(...)`` on a def or class (its
    name), ``REGISTRY.register("name", ...)`` and calls of the module's own registering ``helpers``
    with a string first argument (``register_post_trick("gf")``), with their literal keywords."""
    if module in sys.modules:
        live = getattr(sys.modules[module], registry)
        return {name: live.attributes(name) for name in live.names()}
    return _declared_entries(module, registry, tuple(helpers))


@functools.lru_cache(maxsize=None)
def _declared_entries(module: str, registry: str, helpers: Tuple[str, ...]) -> Dict[str, Dict[str, Any]]:
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read(), spec.origin)
    entries: Dict[str, Dict[str, Any]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and _is_register(deco.func, registry) and not deco.args:
                    entries[node.name] = _literal_keywords(deco, spec.origin)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            if _is_register(func, registry) or isinstance(func, ast.Name) and func.id in helpers:
                entries[node.args[0].value] = _literal_keywords(node, spec.origin)
    return dict(sorted(entries.items()))


def _literal_keywords(call: ast.Call, origin: str) -> Dict[str, Any]:
    try:
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except ValueError:  # the source reader would not see it: a registration bug, not a user's error
        raise ValueError(f"{origin}:{call.lineno}: a registration's keywords must be literals") from None


def _is_register(func: ast.expr, registry: str) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name)
            and func.value.id == registry)
