"""The run configuration: nested dataclasses, strict YAML loading, canonical hashing.

One ``Config`` describes one ablation cell. Loading is strict: an unknown key or a value of the
wrong type is an error naming the file and the key path, before anything runs. ``resolved_yaml``
is what every run logs; ``training_hash`` identifies the trained weights (post-processing, output
paths and the epoch budget are left out, so cells that differ only in those share a training).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from segtricks.tricks import TRICKS, get_tricks


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


# How a trained model is scored (SPEC §7, §8.2–8.4). "ours": BatchNorm in eval mode, foreground
# chosen per image, metrics against the original-size ground truth. "reference": additionally score
# under the reference implementation's protocol (BatchNorm in train mode, inversion per batch of 8,
# metrics on a centre crop of the resized ground truth), to tell protocol gaps from model gaps.
EVAL_PROTOCOLS = ("ours", "reference")


@dataclass
class BackboneConfig:
    name: str = "dino_vits8"
    weights: Optional[str] = None  # a file path, "random-init", or None: the official release


@dataclass
class DatasetRef:
    name: str = "synthetic"
    root: Optional[str] = None  # dataset folder; None: $SEGTRICKS_DATA/<dataset's folder>
    split: str = "train"
    limit: Optional[int] = None  # use only the first N items (quick runs, tests)
    on_error: str = "raise"  # "skip": log, count and leave out unreadable or inconsistent files


@dataclass
class DataConfig:
    train: DatasetRef = field(default_factory=lambda: DatasetRef("duts_tr"))
    val: Optional[DatasetRef] = None  # model selection; never a test set
    image_size: int = 320
    resize_short: int = 355  # the paper; the reference code used image_size + 15
    num_workers: int = 2


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 30
    steps_per_epoch: Optional[int] = None  # cap on steps per epoch; None: the whole dataset


@dataclass
class LossConfig:
    tau: float = 0.4  # affinity threshold on cosine similarity
    eps: float = 1e-6  # affinity below the threshold
    sigma: float = 1.0  # fine graph-TV colour bandwidth
    ncut: float = 1.0
    fine_tv: float = 1.0
    coarse_tv: float = 1.0
    consistency: float = 1.0


@dataclass
class CropConfig:
    frac: float = 0.5  # window side as a fraction of the image side
    eq_weight: float = 0.01  # λ, the weight of L_eq
    ncut_weight: float = 0.01  # weight of the crop's own NCut term
    teacher_gf_radius: int = 9  # the teacher's guided filter (training-time, unlike gf.*)
    teacher_gf_eps: float = 1e-3


@dataclass
class GFConfig:
    radius: int = 9
    eps: float = 1e-3


@dataclass
class BFConfig:
    sigma_spatial: float = 16.0
    sigma_luma: float = 16.0
    sigma_chroma: float = 8.0
    lam: float = 256.0
    cg_iterations: int = 25


@dataclass
class Config:
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tricks: List[str] = field(default_factory=list)  # names from segtricks.tricks.TRICKS
    crop: CropConfig = field(default_factory=CropConfig)
    gf: GFConfig = field(default_factory=GFConfig)
    bf: BFConfig = field(default_factory=BFConfig)
    eval: List[DatasetRef] = field(default_factory=list)  # datasets the cell is evaluated on
    maps: Optional[str] = None  # evaluate precomputed maps <maps>/<dataset>/<id>.png instead of a model
    eval_protocol: str = "ours"  # one of EVAL_PROTOCOLS; "reference" scores under both protocols
    output_dir: str = "outputs/run"
    device: str = "auto"  # auto: CUDA when present, else CPU


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value to the annotated type; ``where`` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type, data: Dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from nested dicts; missing keys keep their defaults."""
    try:
        cfg = _build(Config, data or {}, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cfg.eval_protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"{source}: eval_protocol: expected one of {', '.join(EVAL_PROTOCOLS)}, "
                          f"got {cfg.eval_protocol!r}")
    return cfg


def load_config(path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Read a YAML config file (optionally with dotted-key overrides applied on top)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, str(path))


def set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 1e-3)`` sets d["optim"]["lr"], creating mappings on the way."""
    *parents, last = key.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[last] = value


def to_dict(cfg: Config) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples → lists, as YAML writes them


def resolved_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=True)


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_hash(cfg: Config) -> str:
    """sha256 of the canonical resolved config (everything but where outputs go)."""
    d = to_dict(cfg)
    d.pop("output_dir")
    return _sha256(d)


def training_hash(cfg: Config) -> str:
    """sha256 of what determines the trained weights.

    Left out: post-processing tricks and their parameter sections, the evaluation datasets and
    protocol, output paths, the device, data-loader workers and the epoch budget (a longer run
    continues a shorter one). A training trick's parameter section counts only when that trick is on.
    """
    d = to_dict(cfg)
    for key in ("output_dir", "device", "eval", "maps", "eval_protocol"):
        d.pop(key)
    d["data"].pop("num_workers")
    d["optim"].pop("epochs")
    tricks = get_tricks(cfg.tricks)
    d["tricks"] = sorted(t.name for t in tricks if t.stage == "train")
    for name in TRICKS:
        if name in d and name not in d["tricks"]:
            d.pop(name)
    return _sha256(d)
