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
    table: {...}                 # optional: the paper table it regenerates (``analysis.layouts``)

A cell's name joins its axis values (``dino_s8/crop+gf``); its config is composed from the layers
base file, ``set``, the axis entries and command-line ``--set`` flags (``segtricks.spec.config.compose``).
Every cell is validated (keys, types, registered backbone, trick and dataset names) before anything
runs, and before torch is imported (``read_grid``); errors name the file and line, or the flag. A flag
on a key that an axis varies is refused, as it would give that axis's cells one value (``--force-set``
applies it). Cells of one training hash share one ``Training`` (``load_grid``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from segtricks.spec.config import Config, ConfigError, Layer, compose, config_hash, read_yaml_mapping, set_flag_layers
from segtricks.spec.registry import registered_names

if TYPE_CHECKING:
    from segtricks.engine.training import Training

GRID_KEYS = ("name", "description", "base", "set", "axes", "table")


def experiments_dir() -> Path:
    """``./experiments`` when the working directory has one (a user's own grids), else the one
    beside the package (a source checkout)."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "experiments"


@dataclass
class Cell:
    name: str
    cfg: Config
    config_hash: str
    training: Optional[Training]  # None for cells that score precomputed maps

    @property
    def trains(self) -> bool:
        """Whether the cell needs a trained model (cells scoring precomputed maps do not)."""
        return self.training is not None

    @property
    def training_hash(self) -> str:
        return self.training.hash if self.training else ""


@dataclass
class Grid:
    name: str
    path: Path
    cells: List[Cell]
    description: str = ""
    table: Optional[Dict[str, Any]] = None  # the paper table's layout and published values


def experiment_file(name_or_path: str, kind: str, plural: str, prefix: str, known: Callable[[], List[str]]) -> Path:
    """``NAME`` → experiments/<prefix>NAME.yaml; a .yaml path is taken as is. Unknown names list ``known()``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{kind} file {path} does not exist")
        return path
    folder = experiments_dir()
    path = folder / f"{prefix}{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind} {name_or_path!r}; {plural} in {folder}: {', '.join(known())}")
    return path


def grid_path(name_or_path: str) -> Path:
    """``table3`` → experiments/table3.yaml."""
    return experiment_file(name_or_path, "grid", "grids", "", list_grids)


def list_grids() -> List[str]:
    """Names of the grid files in the experiments folder (YAML mappings with ``axes``)."""
    names = []
    for path in sorted(experiments_dir().glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue  # reported when that grid is loaded, not while listing the others
        if isinstance(data, dict) and "axes" in data:
            names.append(path.stem)
    return names


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
    data = read_yaml_mapping(path, "grid file")
    return data, yaml.compose(path.read_text())


def base_and_set_layers(path: Path, data: Dict[str, Any], base_where: str, set_where: str) -> List[Layer]:
    """The layers an experiment file (grid or study) starts from: its ``base`` config file (relative
    to it), then its ``set:`` overrides. ``*_where`` name those entries in errors."""
    layers: List[Layer] = []
    if "base" in data:
        base_path = path.parent / data["base"]
        if not base_path.is_file():
            raise ConfigError(f"{base_where}: base config {base_path} does not exist")
        layers.append(Layer(read_yaml_mapping(base_path), str(base_path)))
    return layers + [_set_layer(data.get("set") or {}, set_where)]


def _set_layer(overrides: Any, where: str) -> Layer:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'set' must be a mapping of dotted keys to values, got {overrides!r}")
    return Layer({str(k): v for k, v in overrides.items()}, where)


# Where each kind of name in a config is registered: (module, registry variable, registering helpers).
COMPONENTS = {
    "backbone": ("segtricks.models.backbones", "BACKBONES", ()),
    "trick": ("segtricks.method.tricks", "TRICKS", ("register_post_trick",)),
    "dataset": ("segtricks.data.datasets", "DATASETS", ()),
}


# The config keys that hold each kind of name (a layer setting a parent mapping sets them too).
NAME_KEYS = {"backbone": ("backbone.name",), "trick": ("tricks",),
             "dataset": ("data.train.name", "data.val.name", "eval")}


def validate_names(cfg: Config, where: str, layers: Sequence[Layer] = ()) -> None:
    """Registered backbone, tricks and datasets; unknown names list the registered ones. Read from the
    registering modules' source when they are not imported yet, so that a typo costs no torch import.
    With the config's ``layers``, the error blames the last one that set the name (a ``--set`` flag)."""
    refs = [cfg.data.train, *([cfg.data.val] if cfg.data.val else []), *cfg.eval]
    wanted = [("backbone", cfg.backbone.name), *[("trick", t) for t in cfg.tricks], *[("dataset", r.name) for r in refs]]
    for kind, name in wanted:
        known = registered_names(*COMPONENTS[kind])
        if name not in known:
            setters = [layer.source for layer in layers for key in layer.values
                       if any(k == key or k.startswith(f"{key}.") for k in NAME_KEYS[kind])]
            blamed = setters[-1] if setters and setters[-1].startswith("--set") else where
            raise ConfigError(f"{blamed}: unknown {kind} {name!r}; registered {kind}s: {', '.join(known)}")


@dataclass
class GridFile:
    """A grid file expanded into validated cell configs: everything but the trainings (no torch)."""

    name: str
    path: Path
    configs: List[Tuple[str, Config]]  # (cell name, config), in axis order
    description: str = ""
    table: Optional[Dict[str, Any]] = None
    overridden: List[str] = field(default_factory=list)  # the axes --set flags override (with force_set)


def _leaf_keys(values: Dict[Any, Any]) -> Iterator[str]:
    """The dotted keys a ``set:`` mapping sets: ``{crop: {frac: 0.3}}`` sets ``crop.frac``, not all of crop."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from (f"{key}.{k}" for k in _leaf_keys(value))
        else:
            yield str(key)


def _axis_overrides(path: Path, node: yaml.Node, axes: Dict[str, List[Dict[str, Any]]],
                   flag_layers: Sequence[Layer]) -> List[str]:
    """``--set tricks=[gf] overrides grid axis 'tricks' (<file>:<line>: baseline, gf)``, for each flag that
    sets a key (or a mapping above or below it) that entries of an axis set: the flag comes last, so those
    entries would all get its value, and cells meant to differ would silently share a config."""
    found = []
    for flag in flag_layers:
        (key,) = flag.values
        for axis, entries in axes.items():
            names = [str(e["name"]) for e in entries
                     if any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")
                            for k in _leaf_keys(e.get("set") or {}))]
            if names:
                found.append(f"{flag.source} overrides grid axis {axis!r} "
                             f"({path}:{_line_of(node, ['axes', axis])}: {', '.join(names)})")
    return found


def read_grid(name_or_path: str, flags: Sequence[str] = (), force_set: bool = False) -> GridFile:
    """Expand a grid file into validated cell configs (errors name the file, line and key, or the
    flag). A flag that overrides an axis is an error unless ``force_set`` (then it is listed in
    ``overridden``). Imports nothing heavy: the command-line tools call it before importing torch."""
    path = grid_path(name_or_path)
    data, node = _read_yaml(path)
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}:{_line_of(node, [unknown[0]])}: unknown grid key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(GRID_KEYS)}")
    layers = base_and_set_layers(path, data, f"{path}:{_line_of(node, ['base'])}", f"{path}:{_line_of(node, ['set'])}")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"{path}:{_line_of(node, ['axes'])}: 'axes' must map axis names to non-empty lists "
                          f"of {{name, set}} entries")
    flag_layers = set_flag_layers(flags)
    configs: List[Tuple[str, Config]] = []
    for combo in itertools.product(*[list(enumerate(v)) for v in axes.values()]):
        names, axis_layers = [], []
        for axis, (i, entry) in zip(axes, combo):
            where = f"{path}:{_line_of(node, ['axes', axis, i])}"
            if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "set"}:
                raise ConfigError(f"{where}: axis {axis!r} entry {i} must be {{name: ..., set: {{...}}}}, got {entry!r}")
            names.append(str(entry["name"]))
            axis_layers.append(_set_layer(entry.get("set", {}), where))
        cell_name = "/".join(names)
        if any(cell_name == n for n, _ in configs):
            raise ConfigError(f"{path}: two cells are both named {cell_name!r}; axis entry names must differ")
        try:
            cfg = compose([*layers, *axis_layers, *flag_layers])
        except ConfigError as exc:
            raise ConfigError(f"{exc} (cell {cell_name})", exc.key) from None
        validate_names(cfg, f"{path} (cell {cell_name})", [*layers, *axis_layers, *flag_layers])
        configs.append((cell_name, cfg))
    overridden = _axis_overrides(path, node, axes, flag_layers)
    if overridden and not force_set:
        raise ConfigError(f"{overridden[0]}: the flag would replace what those entries set; drop it, "
                          f"or add --force-set to apply it anyway")
    return GridFile(data.get("name", path.stem), path, configs, str(data.get("description", "")).strip(),
                    data.get("table"), overridden)


def load_grid(name_or_path: str, flags: Sequence[str] = (), output_root: str = "outputs") -> Grid:
    """``read_grid``, then each cell's ``Training`` (cells differing only in post-processing share one)."""
    from segtricks.engine.training import Training  # torch and timm: imported once the grid is known to be valid
    # The flags apply as given: the command line has refused those overriding an axis (read_grid) unless
    # --force-set, and a Slurm task rereads the grid with the flags it was submitted with.
    grid_file = read_grid(name_or_path, flags, force_set=True)
    cells, trainings = [], {}
    for cell_name, cfg in grid_file.configs:
        training = None
        if cfg.maps is None:  # trainings live by training hash: cells differing only in post-processing share one
            training = Training.in_root(cfg, output_root)
            training = trainings.setdefault(training.hash, training)
            cfg.output_dir = str(training.dir)
        cells.append(Cell(cell_name, cfg, config_hash(cfg), training))
    return Grid(grid_file.name, grid_file.path, cells, grid_file.description, grid_file.table)
