"""Ablation grids: a base config plus axes of named overrides, expanded into cells.

A grid file (``experiments/<name>.yaml``)::

    name: table3
    base: base.yaml              # relative to the grid file
    set: {data.image_size: 320}  # overrides for every cell (dotted keys)
    axes:                        # cartesian product, in this order
      backbone:
        - {name: dino_s8, set: {backbone.name: dino_vits8}}
      tricks:
        - {name: baseline, set: {tricks: []}}
        - {name: crop+gf, set: {tricks: [crop, gf]}}

A cell's name joins its axis values (``dino_s8/crop+gf``); its config is base + ``set`` + the axis
overrides + command-line ``--set``. Every cell is validated (keys, types, registered backbone,
trick and dataset names) before anything runs; errors name the file and line.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from segtricks.backbones import BACKBONES
from segtricks.config import Config, ConfigError, config_from_dict, config_hash, set_dotted, training_hash
from segtricks.datasets import DATASETS
from segtricks.registry import UnknownNameError
from segtricks.tricks import TRICKS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@dataclass
class Cell:
    name: str
    cfg: Config
    config_hash: str
    training_hash: str

    @property
    def trains(self) -> bool:
        """Whether the cell needs a trained model (cells scoring precomputed maps do not)."""
        return self.cfg.maps is None


@dataclass
class Grid:
    name: str
    path: Path
    cells: List[Cell]
    description: str = ""


def experiment_file(name_or_path: str, kind: str, plural: str, prefix: str, known: Callable[[], List[str]]) -> Path:
    """``NAME`` → experiments/<prefix>NAME.yaml; a .yaml path is taken as is. Unknown names list ``known()``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{kind} file {path} does not exist")
        return path
    path = EXPERIMENTS / f"{prefix}{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind} {name_or_path!r}; {plural} in {EXPERIMENTS}: {', '.join(known())}")
    return path


def grid_path(name_or_path: str) -> Path:
    """``table3`` → experiments/table3.yaml."""
    return experiment_file(name_or_path, "grid", "grids", "", list_grids)


def list_grids() -> List[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if "axes:" in p.read_text())


def _line_of(node: yaml.Node, keys: List[Any]) -> Optional[int]:
    """1-based line of the value at ``keys`` inside a composed YAML node, where it can be found."""
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key]
            if not match:
                return None
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return None
    return node.start_mark.line + 1


def _read_yaml(path: Path) -> tuple[Dict[str, Any], yaml.Node]:
    try:
        text = path.read_text()
        data, node = yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data, node


def _apply(data: Dict[str, Any], overrides: Any, where: str) -> None:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'set' must be a mapping of dotted keys to values, got {overrides!r}")
    for key, value in overrides.items():
        set_dotted(data, str(key), copy.deepcopy(value))


def validate_names(cfg: Config, where: str) -> None:
    """Registered backbone, tricks and datasets; unknown names list the registered ones."""
    try:
        BACKBONES.get(cfg.backbone.name)
        for trick in cfg.tricks:
            TRICKS.get(trick)
        for ref in [cfg.data.train, *([cfg.data.val] if cfg.data.val else []), *cfg.eval]:
            DATASETS.get(ref.name)
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_grid(name_or_path: str, cli_overrides: Optional[Dict[str, Any]] = None,
              output_root: str = "outputs") -> Grid:
    """Expand a grid file into validated cells (errors name the file, line and key)."""
    path = grid_path(name_or_path)
    data, node = _read_yaml(path)
    unknown = sorted(set(data) - {"name", "description", "base", "set", "axes"})
    if unknown:
        raise ConfigError(f"{path}:{_line_of(node, [unknown[0]])}: unknown grid key(s) {', '.join(unknown)}; "
                          f"valid: name, description, base, set, axes")
    name = data.get("name", path.stem)
    base: Dict[str, Any] = {}
    if "base" in data:
        base_path = path.parent / data["base"]
        if not base_path.is_file():
            raise ConfigError(f"{path}:{_line_of(node, ['base'])}: base config {base_path} does not exist")
        base, _ = _read_yaml(base_path)
    _apply(base, data.get("set", {}), f"{path}:{_line_of(node, ['set'])}")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"{path}:{_line_of(node, ['axes'])}: 'axes' must map axis names to non-empty lists "
                          f"of {{name, set}} entries")
    cells = []
    for combo in itertools.product(*[list(enumerate(v)) for v in axes.values()]):
        cell_data = copy.deepcopy(base)
        names = []
        for axis, (i, entry) in zip(axes, combo):
            where = f"{path}:{_line_of(node, ['axes', axis, i])}"
            if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "set"}:
                raise ConfigError(f"{where}: axis {axis!r} entry {i} must be {{name: ..., set: {{...}}}}, got {entry!r}")
            names.append(str(entry["name"]))
            _apply(cell_data, entry.get("set", {}), where)
        cell_name = "/".join(names)
        for key, value in (cli_overrides or {}).items():
            set_dotted(cell_data, key, copy.deepcopy(value))
        source = f"{path} (cell {cell_name})"
        cfg = config_from_dict(cell_data, source)
        validate_names(cfg, source)
        th = training_hash(cfg)
        # Trainings live by training hash, so cells differing only in post-processing share one.
        cfg.output_dir = str(Path(output_root) / "trainings" / th[:16])
        cells.append(Cell(cell_name, cfg, config_hash(cfg), th))
    seen = {}
    for cell in cells:
        if cell.name in seen:
            raise ConfigError(f"{path}: two cells are both named {cell.name!r}; axis entry names must differ")
        seen[cell.name] = cell
    return Grid(name, path, cells, str(data.get("description", "")).strip())
