"""The evaluation caches' files on disk, written and read in one place: their names, and what a folder of
them holds. Torch-free, so that ``python -m segtricks.cache`` lists them at once.

Each cache is two files in its folder (``<output root>/keys/``, or a training's ``predictions/``):
``<stem>-<hash>.npy`` (float16 rows, in dataset order) and ``<stem>-<hash>.json`` (the ids it holds and
what it belongs to; published last, so its presence says the cache is complete). The stem says what
the rows are: ``<dataset>-<split>-<limit|all>-<size>-<protocol>`` (``dataset_stem``), prefixed by the
backbone for keys (``keys_stem``) and by ``k16`` for masks (``masks_stem``: predicted on float16 keys).
The hash is of everything the rows depend on (``segtricks.evaluation.prediction_cache``). A cache being
written is ``.<file>.<host>.<pid>.tmp`` (``segtricks.files.temp_path``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np

from segtricks.engine.folder import KEYS, TrainingFolder
from segtricks.files import TempName, parse_temp_name, writer_alive

KINDS = ("masks", "keys")
SUFFIXES = (".npy", ".json")  # a cache's two files
MASKS_PREFIX = "k16"


def dataset_stem(name: str, split: str, limit: Optional[int], size: int, protocol: str) -> str:
    """What rows of a dataset at a prediction size under a protocol are called."""
    return f"{name}-{split}-{limit or 'all'}-{size}-{protocol}"


def keys_stem(backbone: str, dataset: str) -> str:
    return f"{backbone}-{dataset}"


def masks_stem(dataset: str) -> str:
    return f"{MASKS_PREFIX}-{dataset}"


def cache_file(folder: Path, stem: str, key_hash: str) -> Path:
    """The ``.npy`` of a cache (its ``.json`` is beside it, ``with_suffix``)."""
    return Path(folder) / f"{stem}-{key_hash[:16]}.npy"


def meta_file(array: Path) -> Path:
    """The ``.json`` beside a cache's ``.npy``."""
    return Path(array).with_suffix(".json")


def caches_of_stem(folder: Path, stem: str) -> List[Path]:
    """Every file of every cache of ``stem`` in ``folder`` (a newer model's cache replaces them)."""
    return list(Path(folder).glob(f"{stem}-*"))


@dataclass
class Cache:
    """One cache (``.npy`` and ``.json``), or one partial file of a cache being written (``writer``)."""

    kind: str
    files: List[Path]  # what rm removes, the .json first (a reader takes a cache whose .json it found)
    nbytes: int
    created: float  # unix seconds: the .json's "created", else the file's mtime
    backbone: str = "?"
    weights: Optional[str] = None
    dataset: str = "?"
    size: Optional[int] = None
    protocol: str = "?"
    rows: Optional[int] = None
    training: Optional[str] = None  # a masks cache's training folder name (the hash's first 16 digits)
    writer: Optional[TempName] = None  # what a partial file's name says of its writer
    grids: Optional[Set[str]] = None  # None: no store to tell

    @property
    def partial(self) -> bool:
        return self.writer is not None

    def writer_alive(self) -> Optional[bool]:
        """Whether a partial file's writer runs; None when it ran on another host (not checkable)."""
        return writer_alive(self.writer)


def from_name(kind: str, base: str) -> Dict[str, object]:
    """What a cache's file name says (``[<backbone>-|k16-]<dataset>-<split>-
    <limit>-<size>-<protocol>-<hash>``), for caches whose ``.json`` predates their description."""
    parts = base.split("-")[:-1]  # the hash dropped
    if len(parts) < (6 if kind == "keys" or parts[:1] == ["k16"] else 5) or not parts[-2].isdigit():
        return {}
    head, (split, limit, size, protocol) = parts[:-4], parts[-4:]
    info: Dict[str, object] = {"size": int(size), "protocol": protocol}
    if kind == "keys":  # backbone and dataset names have no '-' (the registered ones)
        info["backbone"], head = head[0], head[1:]
    elif head[0] == "k16":
        head = head[1:]
    info["dataset"] = {"name": "-".join(head), "split": split, "limit": None if limit == "all" else limit}
    return info


def scan(root: Path) -> List[Cache]:
    """Every cache and partial file under output root ``root``."""
    trainings = TrainingFolder.all_in_root(root)
    caches = _scan_folder(Path(root) / KEYS, "keys", None)
    for name, folder in trainings.items():
        caches += _scan_folder(folder.predictions, "masks", name)
    for c in caches:
        if c.kind == "masks" and c.backbone == "?":  # a .json without its description: the training's
            backbone, weights = trainings[c.training].backbone()
            c.backbone, c.weights = backbone or "?", c.weights or weights
    return caches


def _scan_folder(folder: Path, kind: str, training: Optional[str]) -> List[Cache]:
    if not folder.is_dir():
        return []
    bases: Dict[str, List[Path]] = {}
    caches = []
    for path in sorted(folder.iterdir()):
        temp = parse_temp_name(path.name, SUFFIXES)
        if temp:
            cache = _describe(kind, Path(temp.target).stem, {}, [path], training, path)
            if cache is not None:
                cache.writer = temp
                caches.append(cache)
        elif path.suffix in SUFFIXES and not path.name.startswith("."):
            bases.setdefault(path.stem, []).append(path)
    for base, files in bases.items():
        meta = folder / f"{base}.json"
        about = _read_json(meta) if meta in files else None
        cache = _describe(kind, base, about if isinstance(about, dict) else {},
                          sorted(files, key=lambda p: p.suffix != ".json"), training, folder / f"{base}.npy")
        caches += [cache] if cache is not None else []
    return caches


def _describe(kind: str, base: str, about: Dict, files: List[Path], training: Optional[str],
              array: Path) -> Optional[Cache]:
    """The cache of ``files`` (None when they were removed meanwhile: a writer replacing a stale cache)."""
    stats = {}
    for path in files:
        try:
            stats[path] = path.stat()
        except FileNotFoundError:
            pass
    if not stats:
        return None
    info = {**from_name(kind, base), **about}
    rows = info.get("rows")
    if rows is None and array.suffix == ".npy" and array in stats:
        rows = _rows(array)
    created = info.get("created") or stats.get(array, next(iter(stats.values()))).st_mtime
    data = info.get("dataset") or {}
    dataset = f"{data['name']}/{data['split']}/{data['limit'] or 'all'}" if data else "?"
    return Cache(kind=kind, files=list(stats), nbytes=sum(s.st_size for s in stats.values()), created=float(created),
                 backbone=info.get("backbone", "?"), weights=info.get("weights"), dataset=dataset,
                 size=info.get("size"), protocol=info.get("protocol", "?"), rows=rows, training=training)


def _rows(array: Path) -> Optional[int]:
    """The row count in a ``.npy``'s header (a memory map reads no rows)."""
    try:
        return np.load(array, mmap_mode="r").shape[0]
    except (OSError, EOFError, ValueError):  # removed meanwhile, or not a complete .npy
        return None


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is missing (removed meanwhile) or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
