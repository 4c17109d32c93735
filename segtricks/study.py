"""Hyperparameter study definitions (``experiments/study_<name>.yaml``), validated before any trial.

    name: demo
    base: demo_cell.yaml                      # relative to the study file
    set: {optim.epochs: 3}                    # overrides for every trial
    objective: {dataset: {name: synthetic, split: val}, metric: iou, direction: maximize}
    search_space:
      crop.eq_weight: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
      gf.radius: {type: int, low: 2, high: 12}
    sampler: {name: tpe, seed: 0}             # tpe | random
    pruner: {name: median, n_warmup_steps: 1} # median | threshold (lower/upper) | none
    n_trials: 8                               # total, across every resumption

The objective is a validation metric: a test split or a test dataset is refused. Parameters are
config keys; which of them need retraining follows from ``training_hash`` (post-processing keys
such as ``gf.radius`` never do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import optuna

from segtricks.config import METRICS, Config, ConfigError, DatasetRef, Layer, compose, read_yaml_mapping, set_flag_layers
from segtricks.grid import base_and_set_layers, experiment_file, experiments_dir, validate_names

TEST_DATASETS = ("duts_te", "dut_omron", "ecssd", "voc07", "voc12", "coco20k")


@dataclass
class StudySpec:
    name: str
    path: Path
    layers: List[Layer]  # base file, set, objective dataset as validation split, --set flags
    objective_ref: DatasetRef
    metric: str
    direction: str
    space: Dict[str, Dict[str, Any]]
    sampler: Dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: Dict[str, Any] = field(default_factory=lambda: {"name": "median", "n_warmup_steps": 1})
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
        started together on one storage do not propose the same points."""
        kind, seed = self.sampler.get("name", "tpe"), self.sampler.get("seed")
        seed = None if seed is None else int(seed) + trials_stored + 100_003 * worker
        return optuna.samplers.RandomSampler(seed=seed) if kind == "random" else optuna.samplers.TPESampler(seed=seed)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        kind = self.pruner.get("name", "median")
        if kind == "none":
            return optuna.pruners.NopPruner()
        if kind == "threshold":  # stop any trial whose validation metric leaves [lower, upper]
            return optuna.pruners.ThresholdPruner(lower=self.pruner.get("lower"), upper=self.pruner.get("upper"),
                                                  n_warmup_steps=self.pruner.get("n_warmup_steps", 0))
        return optuna.pruners.MedianPruner(n_startup_trials=self.pruner.get("n_startup_trials", 1),
                                           n_warmup_steps=self.pruner.get("n_warmup_steps", 1))


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
    valid = {"name", "description", "base", "set", "objective", "search_space", "sampler", "pruner", "n_trials"}
    if set(data) - valid:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(set(data) - valid))}; valid: {', '.join(sorted(valid))}")
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
                     data.get("sampler") or {"name": "tpe", "seed": 0},
                     data.get("pruner") or {"name": "median", "n_warmup_steps": 1}, int(data.get("n_trials", 8)))
    cfg = spec.config({})  # the base and its overrides, before any parameter is blamed
    for key, p in space.items():  # an unknown parameter fails here, naming the key
        probe = p["choices"][0] if p["type"] == "categorical" else p["low"]
        try:
            cfg = spec.config({key: probe})
        except ConfigError as exc:
            raise ConfigError(f"{path}: search_space.{key} is not a valid config key or value: {exc}") from None
    validate_names(cfg, str(path))
    return spec
