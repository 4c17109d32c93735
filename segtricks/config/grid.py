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
    seeds: [0, 1, 2]             # optional: every cell once per training seed (``ablate --seeds`` replaces it)
    table:                       # optional: the paper table it regenerates (``TableSpec``)
      title: "Table 3: IoU per backbone and trick combination"
      datasets: [dut_omron, duts_te, ecssd]
      metrics: [iou]
      rows: [...]                # optional: the grid's cells, in the paper's order (default: grid order)
      published:                 # optional: per cell, datasets in order, each with its metrics in order
        dino_s8/baseline: [.664, .761, .853]
      contrasts:                 # optional: trick cell against baseline cell (default: analysis.contrasts's rule)
        - {trick: dino_s8/crop+gf, baseline: dino_s8/baseline}

A cell's name joins its axis values (``vocabulary.cell_name``: ``dino_s8/crop+gf``); its config is
composed from the layers base file, ``set``, the axis entries and command-line ``--set`` flags
(``segtricks.config.schema.compose``). Every cell is validated (keys, types, registered backbone, trick
and dataset names, splits) and the table checked against the cells before anything runs, and before
torch is imported (``read_grid``); errors name the file and line (of the grid or its base file), or
the flag. A flag on a key that an axis varies is refused, as it would give that axis's cells one
value (``--force-set`` applies it). Cells of one training hash share one ``Training``
(``segtricks.runners.plan.load_grid``).

Seeds: with ``seeds:`` (or ``--seeds``) every cell is run once per training seed, its config with
``seed: <s>`` as the last layer, so that each replica has its own config and training hash (the cells
that differ only in post-processing share their seed's training). A replica keeps its cell's name (the
run name and ``cell`` tag); ``Cell.id`` (``dino_s8/crop+gf @ seed 1``) tells replicas apart. The
replicas run seed by seed: a whole table at the first seed, then the next. A replica at the seed its
config had anyway is that cell, hash and all (its earlier run counts as done). A grid without seeds has
exactly the cells, names and hashes it had before seeds existed. An axis entry or a ``--set`` flag on
``seed`` is refused with seeds (the replica's seed would replace it; ``--force-set`` lets the flag be).

Contrasts: ``table.contrasts`` lists the comparisons the grid's analysis makes, each a mapping
``{trick: <cell>, baseline: <cell>}`` of two different cells of the grid (``TableSpec.contrasts``).
Without it, each trick cell is compared with the cell whose config is the same but for ``tricks: []``
(``baseline_keys``, read by ``analysis.contrasts``).

Over 400 lines on purpose: a grid file's whole grammar (axes, seeds, set blocks, the table section and
its published values) is read and validated in one place, so that every error names its file and line
the same way.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from segtricks.config.schema import (DATASET_REGISTRY, DEFAULT_METHOD, METHOD_REGISTRY, Config, ConfigError, Layer,
                                     YamlFile, compose, config_hash, patch_misfit, read_yaml_file, set_flag_layers)
from segtricks.registry import registered_attributes, registered_names
from segtricks.config.vocabulary import METRICS, cell_name

if TYPE_CHECKING:
    from segtricks.engine.training import Training

GRID_KEYS = ("name", "description", "base", "set", "axes", "seeds", "table")
TABLE_KEYS = ("title", "datasets", "metrics", "rows", "published", "literature", "contrasts")
CONTRAST_KEYS = ("trick", "baseline")


def experiments_dir() -> Path:
    """``./experiments`` when the working directory has one (a user's own grids), else the one
    beside the package (a source checkout)."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "experiments"


@dataclass(frozen=True)
class TableSpec:
    """The paper table a grid file declares (its ``table:`` section), checked against the grid's cells."""

    title: str
    rows: Tuple[str, ...]  # cell names, in the paper's order
    datasets: Tuple[str, ...]
    metrics: Tuple[str, ...]
    published: Dict[Tuple[str, str, str], float] = field(default_factory=dict)  # (row, dataset, metric)
    contrasts: Tuple[Tuple[str, str], ...] = ()  # (trick cell, baseline cell) as declared; () = the default rule
    # rows the paper copies from the literature and this grid does not run: (name, dataset, metric) → value
    literature: Dict[Tuple[str, str, str], float] = field(default_factory=dict)

    @property
    def literature_rows(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _, _ in self.literature))


@dataclass
class Cell:
    """One run of a grid: a cell, or with seeds one replica of it (``seed``)."""

    name: str
    cfg: Config
    config_hash: str
    training: Optional[Training]  # None for cells that score precomputed maps or run a training-free method
    seed: Optional[int] = None  # the training seed of a replica; None in a grid without seeds
    teacher: Optional["Cell"] = None  # a distillation cell's teacher (``distill.teacher``), of the same seed

    @property
    def id(self) -> str:
        """What tells the runs of a grid apart: the cell name, and with seeds the replica's seed."""
        return self.name if self.seed is None else f"{self.name} @ seed {self.seed}"

    @property
    def trains(self) -> bool:
        """Whether the cell needs a trained model (cells scoring precomputed maps, or running a method
        that trains nothing, do not)."""
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
    table: Optional[TableSpec] = None
    seeds: Tuple[int, ...] = ()  # the training seeds every cell is replicated over; () = none


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


def base_and_set_layers(file: YamlFile) -> List[Layer]:
    """The layers an experiment file (grid or study) starts from: its ``base`` config file (relative
    to it), then its ``set:`` overrides."""
    layers: List[Layer] = []
    if "base" in file.data:
        base = file.data["base"]
        if not isinstance(base, str):
            raise file.error("base", f"base: expected a config file name, got {base!r}")
        base_path = file.path.parent / base
        if not base_path.is_file():
            raise file.error("base", f"base config {base_path} does not exist")
        layers.append(read_yaml_file(base_path).layer())
    return layers + [_set_layer(file, "set", file.data.get("set") or {})]


def _set_layer(file: YamlFile, key: str, overrides: Any) -> Layer:
    if not isinstance(overrides, dict):
        raise file.error(key, f"'set' must be a mapping of dotted keys to values, got {overrides!r}")
    return file.layer(key, {str(k): v for k, v in overrides.items()})


# Where each kind of name in a config is registered: (module, registry variable, registering helpers).
COMPONENTS = {
    "backbone": ("segtricks.models.backbones", "BACKBONES", ()),
    "trick": ("segtricks.method.tricks", "TRICKS", ("register_post_trick",)),
    "method": (*METHOD_REGISTRY, ()),
    "dataset": (*DATASET_REGISTRY, ()),
}


# The config keys that hold each kind of name (a layer setting a parent mapping sets them too).
NAME_KEYS = {"backbone": ("backbone.name",), "trick": ("tricks",),
             "dataset": ("data.train.name", "data.val.name", "eval"), "method": ("method",)}


def validate_names(cfg: Config, where: str, layers: Sequence[Layer] = ()) -> None:
    """Registered backbone, tricks and datasets; unknown names list the registered ones. Read from the
    registering modules' source when they are not imported yet, so that a typo costs no torch import.
    With the config's ``layers``, the error blames the last one that set the name (a ``--set`` flag)."""
    refs = [cfg.data.train, *([cfg.data.val] if cfg.data.val else []), *cfg.eval]
    wanted = [("method", cfg.method), ("backbone", cfg.backbone.name), *[("trick", t) for t in cfg.tricks],
              *[("dataset", r.name) for r in refs]]

    def blamed_for(keys: Sequence[str]) -> str:
        """The --set flag that set one of ``keys`` (or a mapping above it) last, else the grid file."""
        setters = [layer.source for layer in layers for key in layer.values
                   if any(k == key or k.startswith(f"{key}.") for k in keys)]
        return setters[-1] if setters and setters[-1].startswith("--set") else where

    def blamed(kind: str) -> str:
        return blamed_for(NAME_KEYS[kind])

    for kind, name in wanted:
        known = registered_names(*COMPONENTS[kind])
        if name not in known:
            raise ConfigError(f"{blamed(kind)}: unknown {kind} {name!r}; registered {kind}s: {', '.join(known)}")
    method = registered_attributes(*METHOD_REGISTRY)[cfg.method]
    backbones = registered_attributes(*COMPONENTS["backbone"])
    patch = backbones[cfg.backbone.name]["patch"]
    if cfg.backbone.rope_keys is not None and not backbones[cfg.backbone.name]["rope"]:
        rotating = ", ".join(name for name, attrs in backbones.items() if attrs["rope"])
        raise ConfigError(f"{blamed_for(['backbone.rope_keys'])}: backbone.rope_keys applies to a backbone with RoPE ({rotating}), "
                          f"and {cfg.backbone.name!r} has absolute positions; remove backbone.rope_keys")
    misfit = patch_misfit(cfg, patch)
    if method["trains"] and cfg.maps is None and misfit:  # the training and prediction size
        raise ConfigError(f"{where}: {misfit}")
    if cfg.method == DEFAULT_METHOD:
        return
    stages = registered_attributes(*COMPONENTS["trick"])  # crop is registered with stage train, the rest post
    training_tricks = [t for t in cfg.tricks if stages.get(t, {}).get("stage", "post") == "train"]
    if training_tricks and not method["training_tricks"]:
        trick = training_tricks[0]
        why = (f"trains a model without the coarse and fine masks that training trick {trick!r} acts on"
               if method["trains"] else f"does not train, so training trick {trick!r} has nothing to act on")
        raise ConfigError(f"{blamed('method')}: method {cfg.method!r} {why}; keep post-processing tricks only (gf, bf)")
    if cfg.maps is not None:
        raise ConfigError(f"{where}: maps: scores precomputed maps, and method {cfg.method!r} computes its own; "
                          f"set one of them")
    if cfg.eval_protocols != ["ours"]:
        raise ConfigError(f"{where}: eval_protocols {cfg.eval_protocols}: the reference protocol is how the paper's "
                          f"code evaluated Sempart (BatchNorm, inversion per batch); method {cfg.method!r} is scored "
                          f"under ours only")


@dataclass
class GridFile:
    """A grid file expanded into validated cell configs: everything but the trainings (no torch)."""

    name: str
    path: Path
    configs: List[Tuple[str, Config]]  # (cell name, config), in axis order, before the seeds
    description: str = ""
    table: Optional[TableSpec] = None
    overridden: List[str] = field(default_factory=list)  # the axes --set flags override (with force_set)
    seeds: Tuple[int, ...] = ()  # the training seeds every cell is replicated over; () = none
    # (cell name, seed, config) of every run, seed by seed; without seeds, the configs with seed None
    replicas: List[Tuple[str, Optional[int], Config]] = field(default_factory=list)


def _leaf_keys(values: Dict[Any, Any]) -> Iterator[str]:
    """The dotted keys a ``set:`` mapping sets: ``{crop: {frac: 0.3}}`` sets ``crop.frac``, not all of crop."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from (f"{key}.{k}" for k in _leaf_keys(value))
        else:
            yield str(key)


def _axis_overrides(file: YamlFile, flag_layers: Sequence[Layer]) -> List[str]:
    """``--set tricks=[gf] overrides grid axis 'tricks' (<file>:<line>: baseline, gf)``, for each flag that
    sets a key (or a mapping above or below it) that entries of an axis set: the flag comes last, so those
    entries would all get its value, and cells meant to differ would silently share a config."""
    found = []
    for flag in flag_layers:
        (key,) = flag.values
        for axis, entries in file.data["axes"].items():
            names = [str(e["name"]) for e in entries
                     if any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")
                            for k in _leaf_keys(e.get("set") or {}))]
            if names:
                found.append(f"{flag.source} overrides grid axis {axis!r} "
                             f"({file.where(f'axes.{axis}')}: {', '.join(names)})")
    return found


def _axes(file: YamlFile) -> List[List[Tuple[str, Layer]]]:
    """Each axis's entries as (name, the layer of its ``set``), in the file's order."""
    axes = file.data.get("axes") or {}
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise file.error("axes", "'axes' must map axis names to non-empty lists of {name, set} entries")
    out = []
    for axis, entries in axes.items():
        out.append([])
        for i, entry in enumerate(entries):
            key = f"axes.{axis}[{i}]"
            if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "set"}:
                raise file.error(key, f"axis {axis!r} entry {i} must be {{name: ..., set: {{...}}}}, got {entry!r}")
            out[-1].append((str(entry["name"]), _set_layer(file, f"{key}.set", entry.get("set", {}))))
    return out


def _cells(file: YamlFile) -> List[Tuple[str, List[Layer]]]:
    """(name, axis layers) of every cell: the axes' cartesian product, in axis order."""
    cells: List[Tuple[str, List[Layer]]] = []
    for combo in itertools.product(*_axes(file)):
        name = cell_name([n for n, _ in combo])
        if any(name == n for n, _ in cells):
            raise file.error("axes", f"two cells are both named {name!r}; axis entry names must differ")
        cells.append((name, [layer for _, layer in combo]))
    return cells


def _names(file: YamlFile, key: str, names: Any, known: Sequence[str], kind: str, plural: str) -> Tuple[str, ...]:
    """The non-empty list of ``known`` names at ``key``; an unknown one is an error listing ``known``."""
    if not isinstance(names, list) or not names:
        raise file.error(key, f"{key}: expected a non-empty list of {plural}, got {names!r}")
    for i, name in enumerate(names):
        if name not in known:
            raise file.error(f"{key}[{i}]", f"{key}: {name!r} is not a {kind}; {plural}: {', '.join(known)}")
    return tuple(names)


def _table(file: YamlFile, cells: Sequence[str]) -> Optional[TableSpec]:
    """The file's ``table:`` section, its rows and published values checked against the grid's ``cells``."""
    table = file.data.get("table")
    if not table:
        return None
    if not isinstance(table, dict):
        raise file.error("table", f"table: expected a mapping of {', '.join(TABLE_KEYS)}, got {table!r}")
    file.check_keys(table, TABLE_KEYS, "table")
    for key in ("datasets", "metrics"):
        if key not in table:
            raise file.error("table", f"table: needs {key} (a list)")
    datasets = _names(file, "table.datasets", table["datasets"], registered_names(*DATASET_REGISTRY), "dataset",
                      "registered datasets")
    metrics = _names(file, "table.metrics", table["metrics"], list(METRICS), "metric", "metrics")
    rows = _names(file, "table.rows", table["rows"], cells, "cell of the grid", "cells") if "rows" in table else cells
    published = _values(file, "published", table, datasets, metrics, cells)
    literature = _values(file, "literature", table, datasets, metrics, None)
    clash = sorted({name for name, _, _ in literature} & set(cells))
    if clash:
        raise file.error("table.literature", f"table.literature: {clash[0]!r} is a cell of the grid: its published "
                                             f"values go under table.published")
    contrasts = _contrasts(file, table["contrasts"], cells) if "contrasts" in table else ()
    title = str(table.get("title", f"Grid {file.data.get('name', file.path.stem)}"))
    return TableSpec(title, tuple(rows), datasets, metrics, published, contrasts, literature)


def _values(file: YamlFile, key: str, table: Dict[str, Any], datasets: Sequence[str], metrics: Sequence[str],
            cells: Optional[Sequence[str]]) -> Dict[Tuple[str, str, str], float]:
    """``table.published`` (rows are cells of the grid: ``cells``) or ``table.literature`` (rows are any
    name: ``cells`` None): each row's values, datasets in order, each with its metrics in order."""
    values_of: Dict[Tuple[str, str, str], float] = {}
    given = table.get(key) or {}
    if not isinstance(given, dict):
        raise file.error(f"table.{key}", f"table.{key}: expected a mapping of rows to values, got {given!r}")
    for row, values in given.items():
        where = f"table.{key}.{row}"
        if cells is not None and row not in cells:
            raise file.error(where, f"table.{key}: {row!r} is not a cell of the grid; cells: {', '.join(cells)}")
        keys = [(str(row), d, m) for d in datasets for m in metrics]
        if not isinstance(values, list) or not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise file.error(where, f"{where}: expected a list of {len(keys)} numbers (null: not published), "
                                    f"got {values!r}")
        if len(values) != len(keys):
            raise file.error(where, f"{where} has {len(values)} values; expected {len(keys)} (datasets × metrics, "
                                    f"dataset-major)")
        values_of |= {k: float(v) for k, v in zip(keys, values) if v is not None}
    return values_of


def _contrasts(file: YamlFile, given: Any, cells: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``table.contrasts``: a list of ``{trick: <cell>, baseline: <cell>}``, each of two different cells
    of the grid, each pair once."""
    if not isinstance(given, list) or not given:
        raise file.error("table.contrasts", f"table.contrasts: expected a list of {{trick: <cell>, baseline: <cell>}}, "
                                            f"got {given!r}")
    pairs: List[Tuple[str, str]] = []
    for i, entry in enumerate(given):
        key = f"table.contrasts[{i}]"
        if not isinstance(entry, dict):
            raise file.error(key, f"{key}: expected {{trick: <cell>, baseline: <cell>}}, got {entry!r}")
        file.check_keys(entry, CONTRAST_KEYS, key)
        for role in CONTRAST_KEYS:
            if role not in entry:
                raise file.error(key, f"{key}: needs {role} (a cell of the grid)")
            if entry[role] not in cells:
                raise file.error(f"{key}.{role}", f"table.contrasts: {entry[role]!r} is not a cell of the grid; "
                                                  f"cells: {', '.join(cells)}")
        pair = (entry["trick"], entry["baseline"])
        if pair[0] == pair[1]:
            raise file.error(key, f"{key}: {pair[0]!r} against itself; a contrast needs two cells")
        if pair in pairs:
            raise file.error(key, f"{key}: {pair[0]!r} against {pair[1]!r} is declared twice")
        pairs.append(pair)
    return tuple(pairs)


def _seed_problem(seeds: Any, example: str) -> Optional[str]:
    """Why ``seeds`` is not a non-empty list of distinct integers ≥ 0 (like ``example``); None when it is one."""
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        return f"expected a non-empty list of integers ≥ 0, e.g. {example}; got {seeds!r}"
    twice = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    return f"seed {twice[0]} is listed twice; list each seed once" if twice else None


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``ablate --seeds 0,1,2`` → (0, 1, 2): distinct integers ≥ 0, else one line naming the flag."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", part) for part in parts):
        raise ConfigError(f"--seeds {text}: expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2")
    seeds = tuple(map(int, parts))
    problem = _seed_problem(seeds, "--seeds 0,1,2")
    if problem:
        raise ConfigError(f"--seeds {text}: {problem}")
    return seeds


def _file_seeds(file: YamlFile) -> Tuple[int, ...]:
    """The grid file's ``seeds:`` (() without one)."""
    if "seeds" not in file.data:
        return ()
    problem = _seed_problem(file.data["seeds"], "seeds: [0, 1, 2]")
    if problem:
        raise file.error("seeds", f"seeds: {problem}")
    return tuple(file.data["seeds"])


def _seed_overrides(file: YamlFile, flag_layers: Sequence[Layer], source: str, force_set: bool) -> List[str]:
    """With seeds, what else sets ``seed``, which each replica's seed replaces. An axis entry is
    refused (the cells it tells apart would be the same runs); a ``--set seed=`` flag is refused
    unless ``force_set`` (then it is listed, and changes nothing)."""
    for axis, entries in file.data["axes"].items():
        names = [str(e["name"]) for e in entries if "seed" in _leaf_keys(e.get("set") or {})]
        if names:
            raise file.error(f"axes.{axis}", f"axis {axis!r} sets seed ({', '.join(names)}), which {source} sets in "
                                             f"every replica; drop the axis or the seeds")
    replaced = [f"{flag.source} is replaced by each replica's seed ({source})"
                for flag in flag_layers if "seed" in flag.values]
    if replaced and not force_set:
        raise ConfigError(f"{replaced[0]}, so the flag would change nothing; drop it, or add --force-set to go on "
                          f"anyway")
    return replaced


def _read_grid_file(name_or_path: str) -> YamlFile:
    file = read_yaml_file(grid_path(name_or_path), "grid file")
    file.check_keys(file.data, GRID_KEYS)
    return file


def grid_name(name_or_path: str) -> str:
    """A grid's name, its experiment's in the store: the file's ``name:`` for a path (a grid kept
    outside ``experiments/``, such as ``benchmarks/rehearsal.yaml``), else the name given."""
    if Path(name_or_path).suffix not in (".yaml", ".yml"):
        return name_or_path
    file = _read_grid_file(name_or_path)
    return str(file.data.get("name", file.path.stem))


def read_table(name_or_path: str) -> Optional[TableSpec]:
    """The table a grid file declares (None without a ``table:`` section), checked as ``read_grid``
    checks it, without composing the cells' configs (reading results needs no more)."""
    file = _read_grid_file(name_or_path)
    return _table(file, [name for name, _ in _cells(file)])


def read_grid(name_or_path: str, flags: Sequence[str] = (), force_set: bool = False,
              seeds: Optional[Sequence[int]] = None) -> GridFile:
    """Expand a grid file into validated cell configs and their replicas over ``seeds`` (``--seeds``;
    None: the file's ``seeds:``, if any). Errors name the file, line and key, or the flag. A flag that
    overrides an axis or the seeds is an error unless ``force_set`` (then it is listed in
    ``overridden``). Imports nothing heavy: the command-line tools call it before importing torch."""
    file = _read_grid_file(name_or_path)
    layers = base_and_set_layers(file)
    cells = _cells(file)
    table = _table(file, [name for name, _ in cells])
    file_seeds = _file_seeds(file)  # checked even when --seeds replaces it
    if seeds is None:
        seeds, source = file_seeds, f"seeds: {file.data.get('seeds')} at {file.where('seeds')}"
    else:
        seeds, source = tuple(seeds), f"--seeds {','.join(map(str, seeds))}"
        problem = _seed_problem(seeds, "--seeds 0,1,2")
        if problem:
            raise ConfigError(f"{source}: {problem}")
    flag_layers = set_flag_layers(flags)
    configs: List[Tuple[str, Config]] = []
    for name, axis_layers in cells:
        try:
            cfg = compose([*layers, *axis_layers, *flag_layers])
        except ConfigError as exc:
            raise ConfigError(f"{exc} (cell {name})", exc.key) from None
        validate_names(cfg, f"{file.path} (cell {name})", [*layers, *axis_layers, *flag_layers])
        configs.append((name, cfg))
    _check_teachers(file, configs)
    overridden = _axis_overrides(file, flag_layers)
    if overridden and not force_set:
        raise ConfigError(f"{overridden[0]}: the flag would replace what those entries set; drop it, "
                          f"or add --force-set to apply it anyway")
    replicas: List[Tuple[str, Optional[int], Config]] = [(name, None, cfg) for name, cfg in configs]
    if seeds:
        overridden += _seed_overrides(file, flag_layers, source, force_set)
        replicas = [(name, seed, compose([*layers, *axis_layers, *flag_layers, Layer({"seed": seed}, source)]))
                    for seed in seeds for name, axis_layers in cells]
    return GridFile(file.data.get("name", file.path.stem), file.path, configs,
                    str(file.data.get("description", "")).strip(), table, overridden, seeds, replicas)


def _check_teachers(file: YamlFile, configs: Sequence[Tuple[str, Config]]) -> None:
    """Each ``distill.teacher`` names a cell listed before its student (so that every launcher runs the
    teacher first) that predicts masks itself (not precomputed maps), and the student's method learns
    from its training masks."""
    before: Dict[str, Config] = {}
    for name, cfg in configs:
        teacher = cfg.distill.teacher
        if teacher is not None:
            where = f"{file.path} (cell {name}): distill.teacher {teacher!r}"
            if teacher not in before:
                listed = ", ".join(before) or "none"
                raise ConfigError(f"{where} is not a cell listed before it (cells before it: {listed}); list the "
                                  f"teacher's axis entry first", "distill.teacher")
            if before[teacher].maps is not None:
                raise ConfigError(f"{where} scores precomputed maps (maps:); a teacher predicts its masks "
                                  f"itself: choose a cell that runs a method", "distill.teacher")
            if not registered_attributes(*METHOD_REGISTRY)[cfg.method]["trains_on_masks"]:
                learners = [m for m, a in registered_attributes(*METHOD_REGISTRY).items() if a["trains_on_masks"]]
                raise ConfigError(f"{where}: method {cfg.method!r} does not learn from masks, so a teacher's "
                                  f"pseudo-masks would change nothing; the student's method is one of "
                                  f"{', '.join(learners)}", "distill.teacher")
        before[name] = cfg


def baseline_keys(grid_file: GridFile) -> Dict[str, Tuple[Tuple[str, ...], str]]:
    """Cell name → (its tricks, the config hash of its config with ``tricks: []``): a trick cell's
    default baseline is the cell without tricks of the same key (``analysis.contrasts``). Computed
    before the seeds, so that the replicas of a cell share it."""
    return {name: (tuple(cfg.tricks), config_hash(dataclasses.replace(cfg, tricks=[])))
            for name, cfg in grid_file.configs}
