"""Dependencies run one way (issue 29): a module imports only modules of its own layer or of a lower one.

The layers, lowest first, as the README's package map draws them. An import under ``if TYPE_CHECKING:``
is for annotations only and does not count; an import inside a function does (it runs).
"""
import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from helpers import REPO

LAYERS: List[Tuple[str, ...]] = [
    # foundations; a training folder's layout (engine.folder: paths only) is read by the caches and commands
    ("segtricks.errors", "segtricks.files", "segtricks.registry", "segtricks.runtime",
     "segtricks.engine.folder"),
    ("segtricks.config",),  # what a user writes, validated
    ("segtricks.data",),
    ("segtricks.models", "segtricks.method", "segtricks.methods"),
    ("segtricks.evaluation",),
    ("segtricks.engine",),
    ("segtricks.tracking",),
    ("segtricks.inference",),
    ("segtricks.runners.plan",),
    ("segtricks.estimate",),
    ("segtricks.runners",),
    ("segtricks.launchers",),
    ("segtricks.ablate", "segtricks.tune", "segtricks.train", "segtricks.evaluate", "segtricks.segment",
     "segtricks.cache", "analysis"),  # the commands, and the tables made from the runs
]


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (``segtricks.runners.plan`` before ``segtricks.runners``);
    the package ``segtricks`` itself (a docstring) is a foundation."""
    if module == "segtricks":
        return 0
    best = max(((len(p), i) for i, layer in enumerate(LAYERS) for p in layer
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and the README's map)"
    return best[1]


def modules() -> Iterator[Tuple[str, Path]]:
    for root in ("segtricks", "analysis"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def runtime_imports(path: Path) -> Iterator[Tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    for node in ast.walk(tree):  # the bodies of `if TYPE_CHECKING:` blocks
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)


def ours(name: str) -> bool:
    return name.split(".")[0] in ("segtricks", "analysis")


@pytest.mark.parametrize("module, path", list(modules()), ids=[m for m, _ in modules()])
def test_no_module_imports_a_higher_layer(module, path):
    mine = layer_of(module)
    upward = []
    for name, line in runtime_imports(path):
        if not ours(name):
            continue
        try:
            theirs = layer_of(name)
        except AssertionError:  # `from pkg import name` where name is not a module: its package counts
            continue
        if theirs > mine:
            upward.append(f"{path.relative_to(REPO)}:{line} imports {name} (layer {theirs} > {mine})")
    assert not upward, "\n".join(upward)


def test_tracking_never_imports_the_runners():
    for module, path in modules():
        if module.startswith("segtricks.tracking"):
            assert not [n for n, _ in runtime_imports(path) if n.startswith(("segtricks.runners", "segtricks.launchers"))]
