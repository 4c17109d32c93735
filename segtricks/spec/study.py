"""Hyperparameter study definitions (``experiments/study_<name>.yaml``), validated before any trial.

    name: demo
    base: demo_cell.yaml                      # relative to the study file
    set: {optim.epochs: 3}                    # overrides for every trial
    objective: {dataset: {name: synthetic, split: val}, metric: iou, direction: maximize}
    search_space:
      crop.eq_weight: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
      gf.radius: {type: int, low: 2, high: 12}
    sampler: {name: tpe, seed: 0}             # see SAMPLERS: tpe | random | cmaes | qmc | gp
    pruner: {name: median, n_warmup_steps: 1} # see PRUNERS: median | percentile | successive_halving |
                                              #   hyperband | threshold | none
    n_trials: 8                               # total, across every resumption

The objective is a validation metric: a test split or a test dataset is refused. Parameters are
config keys; which of them need retraining follows from ``training_hash`` (post-processing keys
such as ``gf.radius`` never do). The sampler and pruner entries are Optuna's classes and their
constructor arguments (those not given keep Optuna's defaults); an unknown name, argument or value
type is an error naming the file and line, before any storage or trial exists.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import optuna
import yaml

from segtricks.spec.config import METRICS, Config, ConfigError, DatasetRef, Layer, compose, read_yaml_mapping, set_flag_layers
from segtricks.spec.grid import _line_of, base_and_set_layers, experiment_file, experiments_dir, validate_names

TEST_DATASETS = ("duts_te", "dut_omron", "ecssd", "voc07", "voc12", "coco20k")


class Component(NamedTuple):
    """What a study file's ``sampler:`` or ``pruner:`` name stands for: the Optuna class, the
    constructor arguments a study may set and the values each takes (``int``, ``float``, ``bool`` or
    literal words, alternatives joined by ``|``), the ones it must set, and a package it needs beyond
    Optuna (which imports it only at the first sampled trial). Scalar arguments only: callables and
    nested samplers cannot be written in YAML; arguments Optuna deprecates are left out."""

    cls: str
    args: Dict[str, str]
    required: Tuple[str, ...] = ()
    package: str = ""


SAMPLERS = {
    "tpe": Component("TPESampler", {"seed": "int", "n_startup_trials": "int", "n_ei_candidates": "int",
                                    "multivariate": "bool", "group": "bool", "constant_liar": "bool"}),
    "random": Component("RandomSampler", {"seed": "int"}),
    "cmaes": Component("CmaEsSampler", {"seed": "int", "n_startup_trials": "int", "popsize": "int",
                                        "use_separable_cma": "bool", "with_margin": "bool", "lr_adapt": "bool",
                                        "consider_pruned_trials": "bool"}, package="cmaes"),
    "qmc": Component("QMCSampler", {"seed": "int", "qmc_type": "sobol|halton", "scramble": "bool"}),
    # GP's torch and scipy are segtricks' own dependencies
    "gp": Component("GPSampler", {"seed": "int", "n_startup_trials": "int", "deterministic_objective": "bool"}),
}
_STEPS = {"n_startup_trials": "int", "n_warmup_steps": "int", "interval_steps": "int", "n_min_trials": "int"}
PRUNERS = {
    "median": Component("MedianPruner", _STEPS),
    "percentile": Component("PercentilePruner", {"percentile": "float", **_STEPS}, ("percentile",)),
    "successive_halving": Component("SuccessiveHalvingPruner", {"min_resource": "int|auto", "reduction_factor": "int",
                                                                "min_early_stopping_rate": "int",
                                                                "bootstrap_count": "int"}),
    "hyperband": Component("HyperbandPruner", {"min_resource": "int", "max_resource": "int|auto",
                                               "reduction_factor": "int", "bootstrap_count": "int"}),
    # stops any trial whose validation metric leaves [lower, upper]
    "threshold": Component("ThresholdPruner", {"lower": "float", "upper": "float", "n_warmup_steps": "int",
                                               "interval_steps": "int"}),
    "none": Component("NopPruner", {}),
}
DEFAULT_SAMPLER = {"name": "tpe", "seed": 0}
DEFAULT_PRUNER = {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1}
_TYPES = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool)}


@dataclass
class StudySpec:
    name: str
    path: Path
    layers: List[Layer]  # base file, set, objective dataset as validation split, --set flags
    objective_ref: DatasetRef
    metric: str
    direction: str
    space: Dict[str, Dict[str, Any]]
    sampler: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    pruner: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    n_trials: int = 8

    def config(self, params: Dict[str, Any]) -> Config:
        """The trial's config: the study's layers, then the sampled parameters."""
        return compose([*self.layers, Layer(params, f"{self.path} (params {params})")])

    def suggest(self, trial: optuna.Trial) -> Dict[str, Any]:
        out = {}
        for key, p in self.space.items():
            if p["type"] == "float":
                out[key] = trial.suggest_float(key, p["low"], p["high"], log=p.get("log", False))
            elif p["type"] == "int":
                out[key] = trial.suggest_int(key, p["low"], p["high"], log=p.get("log", False))
            else:
                out[key] = trial.suggest_categorical(key, p["choices"])
        return out

    def make_sampler(self, trials_stored: int = 0, worker: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler, seeded from (study seed, trials already stored, worker index): a continued or
        resumed study proposes new points instead of replaying the first run's sequence, and workers
        started together on one storage do not propose the same points. QMC is the exception: its
        position in the sequence is kept in the storage, and every worker must share one seed."""
        kwargs = {k: v for k, v in self.sampler.items() if k != "name"}
        if kwargs.get("seed") is not None and self.sampler["name"] != "qmc":
            kwargs["seed"] = int(kwargs["seed"]) + trials_stored + 100_003 * worker
        return _build(optuna.samplers, SAMPLERS[self.sampler["name"]].cls, kwargs)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        kwargs = {k: v for k, v in self.pruner.items() if k != "name"}
        return _build(optuna.pruners, PRUNERS[self.pruner["name"]].cls, kwargs)


def _build(module, cls: str, kwargs: Dict[str, Any]):
    with warnings.catch_warnings():  # QMC and GP are experimental in Optuna; a study file chose them on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(module, cls)(**kwargs)


def _where(path: Path, node: yaml.Node, *keys: str) -> str:
    """``path:line`` of the value at ``keys`` (or of the nearest enclosing one that is in the file)."""
    for depth in range(len(keys), 0, -1):
        line = _line_of(node, list(keys[:depth]))
        if line:
            return f"{path}:{line}"
    return str(path)


def check_component(path: Path, node: yaml.Node, what: str, entry: Any, table: Dict[str, Component]) -> None:
    """A study's ``sampler`` or ``pruner`` entry (``what``) against ``table``: a known name whose
    packages are installed, only the arguments it takes, each of the right type."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{_where(path, node, what)}: {what} must be a mapping with a name, e.g. "
                          f"{{name: {next(iter(table))}}}; got {entry!r}")
    name = entry["name"]
    if name not in table:
        raise ConfigError(f"{_where(path, node, what, 'name')}: {what} {name!r} is unknown; "
                          f"valid {what}s: {', '.join(sorted(table))}")
    package = table[name].package
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"{_where(path, node, what, 'name')}: {what} {name!r} needs the {package} package, "
                          f"which is not installed: pip install {package}")
    args = table[name].args
    for key, value in entry.items():
        if key == "name":
            continue
        if key not in args:
            raise ConfigError(f"{_where(path, node, what, key)}: {what} {name!r} has no argument {key!r}; "
                              + (f"valid: {', '.join(sorted(args))}" if args else "it takes none"))
        if not any(_TYPES[alt](value) if alt in _TYPES else value == alt for alt in args[key].split("|")):
            raise ConfigError(f"{_where(path, node, what, key)}: {what} {name!r}: {key} must be "
                              f"{_describe(args[key])}, got {value!r}")
    for key in table[name].required:
        if key not in entry:
            raise ConfigError(f"{_where(path, node, what)}: {what} {name!r} needs {key} ({_describe(args[key])})")


def _describe(kind: str) -> str:
    """``int|auto`` → ``an integer or 'auto'``."""
    words = {"int": "an integer", "float": "a number", "bool": "true or false"}
    return " or ".join(words.get(alt, repr(alt)) for alt in kind.split("|"))


def study_path(name_or_path: str) -> Path:
    """``demo`` → experiments/study_demo.yaml."""
    return experiment_file(name_or_path, "study", "studies", "study_",
                           lambda: sorted(p.stem[len("study_"):] for p in experiments_dir().glob("study_*.yaml")))


def _check_param(path: Path, key: str, p: Any) -> None:
    where = f"{path}: search_space.{key}"
    if not isinstance(p, dict) or p.get("type") not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {p!r}")
    if p["type"] == "categorical":
        if not p.get("choices"):
            raise ConfigError(f"{where}: a categorical parameter needs a non-empty 'choices' list")
        return
    try:
        low, high = float(p["low"]), float(p["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: needs numeric 'low' and 'high'") from None
    if not low < high:
        raise ConfigError(f"{where}: empty or inverted range [{p['low']}, {p['high']}]; 'low' must be below 'high'")
    if p.get("log") and low <= 0:
        raise ConfigError(f"{where}: a log-scale range must be positive, got low={p['low']}")
    p["low"], p["high"] = (int(low), int(high)) if p["type"] == "int" else (low, high)


def load_study(name_or_path: str, flags: Sequence[str] = ()) -> StudySpec:
    path = study_path(name_or_path)
    data = read_yaml_mapping(path, "study file")
    node = yaml.compose(path.read_text())
    valid = {"name", "description", "base", "set", "objective", "search_space", "sampler", "pruner", "n_trials"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{_where(path, node, unknown[0])}: unknown key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    sampler, pruner = data.get("sampler") or dict(DEFAULT_SAMPLER), data.get("pruner") or dict(DEFAULT_PRUNER)
    check_component(path, node, "sampler", sampler, SAMPLERS)
    check_component(path, node, "pruner", pruner, PRUNERS)
    n_trials = data.get("n_trials", 8)
    if not _TYPES["int"](n_trials) or n_trials < 1:
        raise ConfigError(f"{_where(path, node, 'n_trials')}: n_trials must be a positive integer, got {n_trials!r}")
    layers = base_and_set_layers(path, data, str(path), f"{path}: set")
    obj = data.get("objective") or {}
    ref_data = obj.get("dataset") or {}
    try:
        ref = DatasetRef(**ref_data)
    except TypeError:
        raise ConfigError(f"{path}: objective.dataset {ref_data!r} is not a dataset reference") from None
    if ref.split == "test" or ref.name in TEST_DATASETS:
        raise ConfigError(f"{path}: objective.dataset {ref.name} (split {ref.split}) is a test set; tune on a "
                          f"validation split (e.g. synthetic split val, duts_tr split val)")
    metric, direction = obj.get("metric", "iou"), obj.get("direction", "maximize")
    if metric not in METRICS:
        raise ConfigError(f"{path}: objective.metric {metric!r} unknown; one of {', '.join(METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: objective.direction must be maximize or minimize, got {direction!r}")
    space = data.get("search_space") or {}
    if not space:
        raise ConfigError(f"{path}: search_space is empty")
    for key, p in space.items():
        _check_param(path, key, p)
    layers.append(Layer({"data.val": ref_data}, f"{path}: objective.dataset"))  # pruning sees the same split
    spec = StudySpec(data.get("name", path.stem), path, [*layers, *set_flag_layers(flags)], ref, metric, direction, space,
                     sampler, pruner, n_trials)
    for what, make in (("sampler", spec.make_sampler), ("pruner", spec.make_pruner)):
        try:  # Optuna's own range checks (a percentile over 100, no threshold bound), before any storage
            make()
        except (ValueError, TypeError) as exc:  # ThresholdPruner raises TypeError without a bound
            raise ConfigError(f"{_where(path, node, what)}: {what} {getattr(spec, what)['name']!r}: {exc}") from None
    cfg = spec.config({})  # the base and its overrides, before any parameter is blamed
    for key, p in space.items():  # an unknown parameter fails here, naming the key
        probe = p["choices"][0] if p["type"] == "categorical" else p["low"]
        try:
            cfg = spec.config({key: probe})
        except ConfigError as exc:
            raise ConfigError(f"{path}: search_space.{key} is not a valid config key or value: {exc}") from None
    validate_names(cfg, str(path))
    return spec
