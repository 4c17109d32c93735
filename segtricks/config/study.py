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
type is an error naming the file and line, before any storage or trial exists; so is every other
error in the file (the base file's name its line there).
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import optuna

from segtricks.config.schema import (Config, ConfigError, DatasetRef, Layer, YamlFile, compose, dataset_ref_problems,
                                   read_yaml_file, set_flag_layers)
from segtricks.config.grid import base_and_set_layers, experiment_file, experiments_dir, validate_names
from segtricks.config.vocabulary import SALIENCY_METRICS

STUDY_KEYS = ("name", "description", "base", "set", "objective", "search_space", "sampler", "pruner", "n_trials")
OBJECTIVE_KEYS = ("dataset", "metric", "direction")
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


def check_component(file: YamlFile, what: str, entry: Any, table: Dict[str, Component]) -> None:
    """A study's ``sampler`` or ``pruner`` entry (``what``) against ``table``: a known name whose
    packages are installed, only the arguments it takes, each of the right type."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise file.error(what, f"{what} must be a mapping with a name, e.g. {{name: {next(iter(table))}}}; "
                               f"got {entry!r}")
    name = entry["name"]
    if name not in table:
        raise file.error(f"{what}.name", f"{what} {name!r} is unknown; valid {what}s: {', '.join(sorted(table))}")
    package = table[name].package
    if package and importlib.util.find_spec(package) is None:
        raise file.error(f"{what}.name", f"{what} {name!r} needs the {package} package, which is not installed: "
                                         f"pip install {package}")
    args = table[name].args
    for key, value in entry.items():
        if key == "name":
            continue
        if key not in args:
            raise file.error(f"{what}.{key}", f"{what} {name!r} has no argument {key!r}; "
                             + (f"valid: {', '.join(sorted(args))}" if args else "it takes none"))
        if not any(_TYPES[alt](value) if alt in _TYPES else value == alt for alt in args[key].split("|")):
            raise file.error(f"{what}.{key}", f"{what} {name!r}: {key} must be {_describe(args[key])}, got {value!r}")
    for key in table[name].required:
        if key not in entry:
            raise file.error(what, f"{what} {name!r} needs {key} ({_describe(args[key])})")


def _describe(kind: str) -> str:
    """``int|auto`` → ``an integer or 'auto'``."""
    words = {"int": "an integer", "float": "a number", "bool": "true or false"}
    return " or ".join(words.get(alt, repr(alt)) for alt in kind.split("|"))


def study_path(name_or_path: str) -> Path:
    """``demo`` → experiments/study_demo.yaml."""
    return experiment_file(name_or_path, "study", "studies", "study_",
                           lambda: sorted(p.stem[len("study_"):] for p in experiments_dir().glob("study_*.yaml")))


def _check_param(file: YamlFile, key: str, p: Any) -> None:
    at = f"search_space.{key}"

    def error(message: str) -> ConfigError:
        return file.error(at, f"{at}: {message}")

    if not isinstance(p, dict) or p.get("type") not in ("float", "int", "categorical"):
        raise error(f"expected {{type: float|int|categorical, ...}}, got {p!r}")
    if p["type"] == "categorical":
        if not p.get("choices"):
            raise error("a categorical parameter needs a non-empty 'choices' list")
        return
    try:
        low, high = float(p["low"]), float(p["high"])
    except (KeyError, TypeError, ValueError):
        raise error("needs numeric 'low' and 'high'") from None
    if not low < high:
        raise error(f"empty or inverted range [{p['low']}, {p['high']}]; 'low' must be below 'high'")
    if p.get("log") and low <= 0:
        raise error(f"a log-scale range must be positive, got low={p['low']}")
    p["low"], p["high"] = (int(low), int(high)) if p["type"] == "int" else (low, high)


def _objective(file: YamlFile) -> Tuple[DatasetRef, Dict[str, Any], str, str]:
    """The objective's dataset (as a reference, and as written), metric and direction."""
    obj = file.data.get("objective") or {}
    if not isinstance(obj, dict):
        raise file.error("objective", f"objective: expected a mapping of {', '.join(OBJECTIVE_KEYS)}, got {obj!r}")
    file.check_keys(obj, OBJECTIVE_KEYS, "objective")
    ref_data = obj.get("dataset") or {}
    ref = file.section(DatasetRef, "objective.dataset", ref_data)
    for key, value, rule in dataset_ref_problems(ref, "objective.dataset"):
        raise file.error(key, f"{key}: expected {rule}, got {value!r}")
    if ref.split == "test" or ref.name in TEST_DATASETS:
        raise file.error("objective.dataset", f"objective.dataset {ref.name} (split {ref.split}) is a test set; tune "
                                              f"on a validation split (e.g. synthetic split val, duts_tr split val)")
    metric, direction = obj.get("metric", "iou"), obj.get("direction", "maximize")
    if metric not in SALIENCY_METRICS:
        raise file.error("objective.metric", f"objective.metric {metric!r} unknown; one of "
                                             f"{', '.join(SALIENCY_METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise file.error("objective.direction", f"objective.direction must be maximize or minimize, got {direction!r}")
    return ref, ref_data, metric, direction


def load_study(name_or_path: str, flags: Sequence[str] = (), study_name: Optional[str] = None) -> StudySpec:
    """The study file ``name_or_path`` with ``--set`` ``flags``; ``study_name`` replaces the file's
    ``name:`` (the study in the storage, and its MLflow experiment)."""
    file = read_yaml_file(study_path(name_or_path), "study file")
    path, data = file.path, file.data
    file.check_keys(data, STUDY_KEYS)
    sampler, pruner = data.get("sampler") or dict(DEFAULT_SAMPLER), data.get("pruner") or dict(DEFAULT_PRUNER)
    check_component(file, "sampler", sampler, SAMPLERS)
    check_component(file, "pruner", pruner, PRUNERS)
    n_trials = data.get("n_trials", 8)
    if not _TYPES["int"](n_trials) or n_trials < 1:
        raise file.error("n_trials", f"n_trials must be a positive integer, got {n_trials!r}")
    layers = base_and_set_layers(file)
    ref, ref_data, metric, direction = _objective(file)
    space = data.get("search_space") or {}
    if not isinstance(space, dict):
        raise file.error("search_space", f"search_space: expected a mapping of config keys to parameters, "
                                         f"got {space!r}")
    if not space:
        raise file.error("search_space", "search_space is empty")
    for key, p in space.items():
        _check_param(file, key, p)
    layers.append(file.layer("objective.dataset", {"data.val": ref_data}))  # pruning sees the same split
    spec = StudySpec(study_name or data.get("name", path.stem), path, [*layers, *set_flag_layers(flags)], ref, metric, direction, space,
                     sampler, pruner, n_trials)
    for what, make in (("sampler", spec.make_sampler), ("pruner", spec.make_pruner)):
        try:  # Optuna's own range checks (a percentile over 100, no threshold bound), before any storage
            make()
        except (ValueError, TypeError) as exc:  # ThresholdPruner raises TypeError without a bound
            raise file.error(what, f"{what} {getattr(spec, what)['name']!r}: {exc}") from None
    cfg = spec.config({})  # the base and its overrides, before any parameter is blamed
    for key, p in space.items():  # an unknown parameter fails here, naming the key
        probe = p["choices"][0] if p["type"] == "categorical" else p["low"]
        try:
            cfg = spec.config({key: probe})
        except ConfigError as exc:
            raise file.error(f"search_space.{key}", f"search_space.{key} is not a valid config key or value: "
                                                    f"{exc}") from None
    validate_names(cfg, str(path))
    return spec
