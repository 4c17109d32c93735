"""The run configuration: nested dataclasses, one merge path for every source of values, hashing.

One ``Config`` describes one ablation cell. Every source of values is a ``Layer`` (a mapping of
dotted keys, and where it came from): a YAML file, a grid's ``set:`` and axis entries, a study's
``set:`` and sampled parameters, each ``--set key=value`` flag. ``compose(layers)`` merges them in
order and validates strictly: an unknown key, a value of the wrong type or out of range, a split the
dataset does not have, is an error naming the layer that set it (file and line where there is one,
or the flag) and the key path, before anything runs or imports torch. Grid and study files are read
by the same reader (``read_yaml_file``: each value's line) and checked by the same ``check_keys``.
``resolved_yaml`` is what every run logs; ``config_hash`` identifies a cell (the training's
identity is ``segtricks.engine.training.training_hash``).

Over 400 lines on purpose: the config's format has one owner: its dataclasses, the merge of layers,
the validation that blames a file and line, the YAML reading and the hashes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import yaml

from segtricks.errors import BadInput
from segtricks.registry import registered_attributes, registered_names


class ConfigError(BadInput, ValueError):
    """A config that cannot be used; the message names the source and the key.

    ``key`` is the dotted key path at fault where there is one (used to blame the layer that set it).
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


# How trained models are scored: the protocols registered in segtricks.evaluation.protocols ("ours",
# docs/evaluation.md#our-protocol; "reference", docs/evaluation.md#the-references-protocol), read from its source so that validating a config imports no torch.
EVAL_PROTOCOLS = tuple(registered_names("segtricks.evaluation.protocols", "PROTOCOLS"))
# The key ``eval_protocols`` replaced: "ours" meant [ours], "reference" meant both.
LEGACY_EVAL_PROTOCOL = {"ours": ["ours"], "reference": ["ours", "reference"]}

# Where datasets are registered, each with the splits it has (``splits``; none: one split, ``split`` ignored).
DATASET_REGISTRY = ("segtricks.data.datasets", "DATASETS")
ON_ERROR = ("raise", "skip")  # a dataset's bad files stop the run, or are logged, counted and left out


@dataclass
class BackboneConfig:
    name: str = "dino_vits8"
    weights: Optional[str] = None  # a file path, "random-init", None: the official release, or "official-or-random-init"
    rope_keys: Optional[str] = None  # a RoPE backbone's keys "before" or "after" the rotation; None: before


@dataclass
class DatasetRef:
    name: str = "synthetic"
    root: Optional[str] = None  # dataset folder; None: $SEGTRICKS_DATA/<dataset's folder>
    split: str = "train"
    limit: Optional[int] = None  # use only the first N items (quick runs, tests)
    on_error: str = "raise"  # ON_ERROR; "skip": log, count and leave out unreadable or inconsistent files


@dataclass
class DataConfig:
    train: DatasetRef = field(default_factory=lambda: DatasetRef("duts_tr"))
    val: Optional[DatasetRef] = None  # model selection; never a test set
    image_size: int = 320
    resize_short: int = 355  # the paper; the reference code used image_size + 15
    num_workers: Union[int, str] = "auto"  # loader processes; auto: the CPUs this process may use − 1 (segtricks.data.loaders)


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
class TokenCutConfig:
    """TokenCut (``method: tokencut``; docs/methods.md#tokencut)."""

    tau: float = 0.2  # the binary graph: 1 where the keys' cosine is above tau
    eps: float = 1e-5  # and eps elsewhere
    solver: str = "auto"  # the second eigenvector: auto | dense (the authors' scipy eigh) | arpack | torch


@dataclass
class LostConfig:
    """LOST (``method: lost``; docs/methods.md#lost)."""

    k_patches: int = 100  # the lowest-degree patches the seed is expanded over


@dataclass
class DeepSpectralConfig:
    """Deep Spectral Methods' single-object localisation (``method: deep_spectral``; docs/methods.md#deep-spectral)."""

    connectivity: int = 8  # of the largest component (the authors' skimage label: 8)
    solver: str = "auto"  # as tokencut.solver


@dataclass
class FoundConfig:
    """FOUND (``method: found``; docs/methods.md#found). Its training's batch, rate and length are the
    ``optim`` and ``data`` keys (``experiments/found.yaml`` sets the authors')."""

    bkg_threshold: float = 0.3  # background: cosine with the least-attended patch above this
    bs_weight: float = 1.5  # the BCE against its own prediction refined by the bilateral solver (always)
    self_weight: float = 4.0  # the BCE against its own prediction (after stop_bkg_loss steps)
    stop_bkg_loss: int = 100  # steps with the BCE against the refined inverted background (weight 1)
    bs_iou: float = 0.5  # a refinement is used where its IoU with the mask it refines is above this
    lr_step: int = 50  # the learning rate × lr_gamma every lr_step steps (StepLR)
    lr_gamma: float = 0.95
    scale_range: Tuple[float, float] = (0.1, 3.0)  # the training images' random rescale
    mode: str = "single"  # single: the largest foreground component (the paper's FOUND - single); multi: the sigmoid


@dataclass
class SelfMaskConfig:
    """SelfMask (``method: selfmask``; docs/methods.md#selfmask), trained on the masks of its
    ``data.train`` dataset (pseudo-masks). Its batch, rate and length are the ``optim`` and ``data`` keys
    (``experiments/selfmask.yaml`` sets the authors')."""

    queries: int = 20  # learned queries of the decoder
    decoder_layers: int = 6  # DETR decoder layers; the loss covers each layer's masks
    ranking: str = "argmax"  # argmax: the ranking loss lifts the best query, as inference picks it; as_written: the authors' sign
    ranking_weight: float = 1.0
    scale_range: Tuple[float, float] = (0.1, 1.0)  # the training images' random rescale (then padded to the size)


@dataclass
class DistillConfig:
    """Training on another cell's predictions (docs/methods.md#distillation): ``teacher`` names a cell
    listed before this one in the same grid; its soft masks on ``data.train``, through its own
    post-processing and binarised at ``threshold``, are this cell's training masks. The grid fills
    ``teacher_hash`` (hashed into this cell's hashes) and ``masks`` (where the export is)."""

    teacher: Optional[str] = None  # a cell of the grid; None: train on data.train's own masks
    threshold: float = 0.5  # foreground where the teacher's soft mask is above this
    teacher_hash: Optional[str] = None  # the teacher cell's config hash (set by the grid)
    masks: Optional[str] = None  # the export's folder (set by the grid; no hash depends on it)


# Each method's own section: hashed only into the cells of that method.
METHOD_SECTIONS = ("tokencut", "lost", "deep_spectral", "found", "selfmask")
FOUND_MODES = ("single", "multi")
SELFMASK_RANKINGS = ("argmax", "as_written")
ROPE_KEYS = ("before", "after")  # where a RoPE backbone's keys are read; the first is the default
DEFAULT_METHOD = "sempart"
METHOD_REGISTRY = ("segtricks.methods.registry", "METHODS")
EIGENSOLVERS = ("auto", "dense", "arpack", "torch")


@dataclass
class CacheConfig:
    """What evaluation keeps on disk (``segtricks.evaluation.prediction_cache``); ``python -m segtricks.cache``
    lists and removes it. Off costs time, never changes a number: grid evaluations round keys and
    masks through float16 either way."""

    keys: bool = True  # backbone keys per (backbone, weights, dataset): <output root>/keys (ViT-S/8: 1.2 MB an image)
    masks: bool = True  # a training's raw masks per dataset: <training>/predictions (0.2 MB an image at 320²)


@dataclass
class TrackingConfig:
    """What a run records beside its results; never changes a number."""

    system_metrics: bool = True  # CPU, memory (and GPU) over time on training runs (segtricks.tracking.system_metrics)


@dataclass
class Config:
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tricks: List[str] = field(default_factory=list)  # names from segtricks.method.tricks.TRICKS
    crop: CropConfig = field(default_factory=CropConfig)
    gf: GFConfig = field(default_factory=GFConfig)
    bf: BFConfig = field(default_factory=BFConfig)
    eval: List[DatasetRef] = field(default_factory=list)  # datasets the cell is evaluated on
    maps: Optional[str] = None  # evaluate precomputed maps <maps>/<dataset>/<id>.png instead of a model
    eval_protocols: List[str] = field(default_factory=lambda: ["ours"])  # each cell is scored under each (EVAL_PROTOCOLS)
    method: str = DEFAULT_METHOD  # a registered method (METHOD_REGISTRY): sempart, or another system of the paper
    tokencut: TokenCutConfig = field(default_factory=TokenCutConfig)
    lost: LostConfig = field(default_factory=LostConfig)
    deep_spectral: DeepSpectralConfig = field(default_factory=DeepSpectralConfig)
    found: FoundConfig = field(default_factory=FoundConfig)
    selfmask: SelfMaskConfig = field(default_factory=SelfMaskConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "outputs/run"
    device: str = "auto"  # auto: CUDA when present, else CPU


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value to the annotated type; ``where`` names it in errors."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], where)
        for alternative in inner:  # the first type that takes the value
            try:
                return _convert(value, alternative, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(a.__name__ for a in inner)}, got {value!r}", where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", where)
        return _build(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", where)
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}", where)
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
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}", where)


def check_keys(given: Iterable[Any], valid: Sequence[str], at: str = "") -> None:
    """The one schema check of the mappings users write (config sections, grid, study and table
    files): keys outside ``valid`` are ``<at>: unknown key(s) a, b; valid keys: <valid, in order>``,
    a ConfigError whose ``key`` is the first unknown key's path (its source's line is found by it)."""
    unknown = sorted(set(map(str, given)) - set(valid))
    if unknown:
        raise ConfigError(f"{at + ': ' if at else ''}unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(valid)}", f"{at}.{unknown[0]}" if at else unknown[0])


def _build(cls: type, data: Dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    check_keys(data, sorted(f.name for f in dataclasses.fields(cls)), where)
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


@dataclass
class Layer:
    """One source of config values: ``values`` maps dotted keys (``optim.lr``) or top-level keys to
    values, each replacing what earlier layers set there; ``source`` names it in errors, ``lines``
    (read from a YAML file: ``YamlFile.layer``) the line of each key path it sets."""

    values: Dict[str, Any]
    source: str
    lines: Dict[str, int] = field(default_factory=dict)  # key path → 1-based line; "": the whole layer's

    def where(self, key: str = "") -> str:
        """``source:line`` of ``key`` (or of the nearest key above it) where the line is known, else ``source``."""
        line = _line_at(self.lines, key)
        return f"{self.source}:{line}" if line else self.source


def _blame(origin: Dict[str, Layer], key: str, default: str) -> str:
    """Where the layer that last set ``key`` (or the nearest key above it) sets it."""
    best = ""
    for k in origin:
        if (key == k or key.startswith(k + ".") or key.startswith(k + "[")) and len(k) > len(best):
            best = k
    return origin[best].where(key) if best else default


def compose(layers: Sequence[Layer]) -> Config:
    """Merge ``layers`` in order over the defaults and validate the result (see the module docstring)."""
    data: Dict[str, Any] = {}
    origin: Dict[str, Layer] = {}
    default = layers[0].source if layers else "<defaults>"
    for layer in layers:
        for key, value in layer.values.items():
            key = str(key)
            try:
                set_dotted(data, key, copy.deepcopy(value))
            except ConfigError as exc:
                raise ConfigError(f"{layer.where(key)}: {key}: {exc} here (set by {_blame(origin, exc.key, default)}), "
                                  f"so it has no key {key[len(exc.key) + 1:]!r}; set {exc.key} whole, or leave "
                                  f"{key} out of this config", key) from None
            for k in [k for k in origin if k.startswith(key + ".")]:
                del origin[k]  # replaced together with the mapping above them
            origin[key] = layer
    if "eval_protocol" in data:
        _read_legacy_eval_protocol(data, origin, default)
    try:
        cfg = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{_blame(origin, exc.key, default)}: {exc}", exc.key) from None
    for name in cfg.eval_protocols:
        if name not in EVAL_PROTOCOLS:
            raise ConfigError(f"{_blame(origin, 'eval_protocols', default)}: eval_protocols: {name!r} is not a "
                              f"protocol; expected some of {', '.join(EVAL_PROTOCOLS)}", "eval_protocols")
    if not cfg.eval_protocols or len(set(cfg.eval_protocols)) < len(cfg.eval_protocols):
        raise ConfigError(f"{_blame(origin, 'eval_protocols', default)}: eval_protocols: expected a non-empty list "
                          f"of distinct protocols, got {cfg.eval_protocols!r}", "eval_protocols")
    for key, value, rule in itertools.chain(_out_of_range(cfg), *(dataset_ref_problems(r, k) for k, r in _refs(cfg))):
        raise ConfigError(f"{_blame(origin, key, default)}: {key}: expected {rule}, got {value!r}", key)
    repeated = [t for i, t in enumerate(cfg.tricks) if t in cfg.tricks[:i]]
    if repeated:  # it would run twice (filter twice, add its loss twice): a typo, not an ablation
        raise ConfigError(f"{_blame(origin, 'tricks', default)}: tricks: {repeated[0]!r} listed twice", "tricks")
    return cfg


_warned_legacy: set = set()


def _read_legacy_eval_protocol(data: Dict[str, Any], origin: Dict[str, Layer], default: str) -> None:
    """``eval_protocol: ours|reference`` (the key before ``eval_protocols``) as the list it meant, with
    one deprecation line per source that still writes it."""
    source = _blame(origin, "eval_protocol", default)
    value = data.pop("eval_protocol")
    if "eval_protocols" in data:
        raise ConfigError(f"{source}: eval_protocol and eval_protocols are both set; keep eval_protocols",
                          "eval_protocol")
    if value not in LEGACY_EVAL_PROTOCOL:
        raise ConfigError(f"{source}: eval_protocol: expected one of ours, reference, got {value!r} (the key is "
                          f"deprecated: write eval_protocols: [ours] or [ours, reference])", "eval_protocol")
    data["eval_protocols"] = LEGACY_EVAL_PROTOCOL[value]
    origin["eval_protocols"] = origin.pop("eval_protocol")
    if source not in _warned_legacy:
        _warned_legacy.add(source)
        print(f"warning: {source}: eval_protocol: {value} is deprecated; write eval_protocols: "
              f"[{', '.join(LEGACY_EVAL_PROTOCOL[value])}] (the same cells, the same hashes)", file=sys.stderr)


def _out_of_range(cfg: Config) -> Iterator[Tuple[str, Any, str]]:
    """(key, value, rule) of every value outside its allowed range: sizes and counts that would only
    fail later (an epoch count of 0 trains nothing and leaves no checkpoint to evaluate)."""
    at_least_1 = {"optim.epochs": cfg.optim.epochs, "optim.batch_size": cfg.optim.batch_size,
                  "data.image_size": cfg.data.image_size, "gf.radius": cfg.gf.radius,
                  "crop.teacher_gf_radius": cfg.crop.teacher_gf_radius, "bf.cg_iterations": cfg.bf.cg_iterations}
    if cfg.optim.steps_per_epoch is not None:
        at_least_1["optim.steps_per_epoch"] = cfg.optim.steps_per_epoch
    at_least_1.update({f"{where}.limit": r.limit for where, r in _refs(cfg) if r.limit is not None})
    for key, value in at_least_1.items():
        if value < 1:
            yield key, value, "an integer ≥ 1"
    positive = {"optim.lr": cfg.optim.lr, "loss.sigma": cfg.loss.sigma, "gf.eps": cfg.gf.eps,
                "crop.teacher_gf_eps": cfg.crop.teacher_gf_eps, "bf.sigma_spatial": cfg.bf.sigma_spatial,
                "bf.sigma_luma": cfg.bf.sigma_luma, "bf.sigma_chroma": cfg.bf.sigma_chroma, "bf.lam": cfg.bf.lam}
    for key, value in positive.items():
        if not value > 0:
            yield key, value, "a number > 0"
    if isinstance(cfg.data.num_workers, str) and cfg.data.num_workers != "auto":
        yield "data.num_workers", cfg.data.num_workers, "an integer ≥ 0 or auto"
    workers = {"data.num_workers": cfg.data.num_workers} if isinstance(cfg.data.num_workers, int) else {}
    non_negative = {**workers, "optim.weight_decay": cfg.optim.weight_decay,
                    "loss.eps": cfg.loss.eps, "crop.eq_weight": cfg.crop.eq_weight,
                    "crop.ncut_weight": cfg.crop.ncut_weight,
                    **{f"loss.{k}": getattr(cfg.loss, k) for k in ("ncut", "fine_tv", "coarse_tv", "consistency")}}
    for key, value in non_negative.items():
        if value < 0:
            yield key, value, "a number ≥ 0"
    if not 0 < cfg.crop.frac <= 1:
        yield "crop.frac", cfg.crop.frac, "a fraction in (0, 1]"
    if cfg.data.resize_short < cfg.data.image_size:
        yield "data.resize_short", cfg.data.resize_short, f"≥ data.image_size ({cfg.data.image_size})"
    for key, value in (("tokencut.solver", cfg.tokencut.solver), ("deep_spectral.solver", cfg.deep_spectral.solver)):
        if value not in EIGENSOLVERS:
            yield key, value, " or ".join(EIGENSOLVERS)
    if cfg.deep_spectral.connectivity not in (4, 8):
        yield "deep_spectral.connectivity", cfg.deep_spectral.connectivity, "4 or 8"
    if cfg.lost.k_patches < 1:
        yield "lost.k_patches", cfg.lost.k_patches, "an integer ≥ 1"
    fc = cfg.found
    for key, value in (("found.stop_bkg_loss", fc.stop_bkg_loss), ("found.bs_weight", fc.bs_weight),
                       ("found.self_weight", fc.self_weight)):
        if value < 0:
            yield key, value, "a number ≥ 0"
    if fc.lr_step < 1:
        yield "found.lr_step", fc.lr_step, "an integer ≥ 1"
    for key, value in (("found.lr_gamma", fc.lr_gamma), ("found.bs_iou", fc.bs_iou)):
        if not 0 <= value <= 1:
            yield key, value, "a number in [0, 1]"
    if not 0 < fc.scale_range[0] <= fc.scale_range[1]:
        yield "found.scale_range", list(fc.scale_range), "[low, high] with 0 < low ≤ high"
    if fc.mode not in FOUND_MODES:
        yield "found.mode", fc.mode, " or ".join(FOUND_MODES)
    sc = cfg.selfmask
    for key, value in (("selfmask.queries", sc.queries), ("selfmask.decoder_layers", sc.decoder_layers)):
        if value < 1:
            yield key, value, "an integer ≥ 1"
    if sc.ranking not in SELFMASK_RANKINGS:
        yield "selfmask.ranking", sc.ranking, " or ".join(SELFMASK_RANKINGS)
    if sc.ranking_weight < 0:
        yield "selfmask.ranking_weight", sc.ranking_weight, "a number ≥ 0"
    if not 0 < sc.scale_range[0] <= sc.scale_range[1] <= 1:
        yield "selfmask.scale_range", list(sc.scale_range), "[low, high] with 0 < low ≤ high ≤ 1 (the image is padded, never cropped)"
    if not 0 < cfg.distill.threshold < 1:
        yield "distill.threshold", cfg.distill.threshold, "a number in (0, 1)"
    if cfg.backbone.rope_keys not in (None, *ROPE_KEYS):
        yield "backbone.rope_keys", cfg.backbone.rope_keys, " or ".join(ROPE_KEYS) + " (the rotation of a RoPE backbone)"


def patch_misfit(cfg: Config, patch: int) -> Optional[str]:
    """The one rule for the size a trained model trains and predicts at, wherever it is checked (a grid
    before it runs, ``train``, ``evaluate``, ``segment``): ``data.image_size`` is a multiple of the
    backbone's patch, or this message, naming the two nearest sizes that are."""
    if cfg.data.image_size % patch == 0:
        return None
    low = cfg.data.image_size // patch * patch
    return (f"data.image_size {cfg.data.image_size} is not a multiple of the patch size {patch} of backbone "
            f"{cfg.backbone.name!r}; use {low or patch} or {low + patch}")


def _refs(cfg: Config) -> List[Tuple[str, DatasetRef]]:
    """(key path, reference) of every dataset the config reads."""
    refs = [("data.train", cfg.data.train)] + ([("data.val", cfg.data.val)] if cfg.data.val else [])
    return refs + [(f"eval[{i}]", r) for i, r in enumerate(cfg.eval)]


def dataset_ref_problems(ref: DatasetRef, key: str) -> Iterator[Tuple[str, Any, str]]:
    """(key, value, rule) for the ``on_error`` and ``split`` of the dataset reference at ``key`` that the
    dataset would refuse: caught here, torch-free, not as a missing dataset after the imports. A
    dataset registered without ``splits`` ignores ``split``; an unregistered name is left to
    ``grid.validate_names``, which lists the registered ones."""
    if ref.on_error not in ON_ERROR:
        yield f"{key}.on_error", ref.on_error, " or ".join(ON_ERROR)
    splits = registered_attributes(*DATASET_REGISTRY).get(ref.name, {}).get("splits")
    if splits and ref.split not in splits:
        yield f"{key}.split", ref.split, f"a split of {ref.name} ({', '.join(splits)})"


def config_from_dict(data: Dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from nested dicts; missing keys keep their defaults."""
    return compose([Layer(data or {}, source)])


@dataclass
class YamlFile:
    """A YAML file's top-level mapping and the line of every value in it: what lets each error about
    a config, grid or study file name ``file:line``."""

    path: Path
    data: Dict[str, Any]
    lines: Dict[str, int]  # key path (``optim.lr``, ``axes.tricks[0].set``) → 1-based line of its value

    def where(self, key: str = "") -> str:
        """``path:line`` of the value at ``key`` (or of the nearest key above it in the file), or the path alone."""
        line = _line_at(self.lines, key)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, key: str, message: str) -> ConfigError:
        """``<path:line of key>: <message>``."""
        return ConfigError(f"{self.where(key)}: {message}", key)

    def check_keys(self, given: Dict[str, Any], valid: Sequence[str], key: str = "") -> None:
        """``check_keys`` of the mapping ``given`` found at ``key``, naming the line of its first unknown key."""
        try:
            check_keys(given, valid, key)
        except ConfigError as exc:
            raise self.error(exc.key, str(exc)) from None

    def section(self, cls: type, key: str, values: Any) -> Any:
        """``values`` (found at ``key``) as the dataclass ``cls``, converted and checked as a config's
        sections are; the error names the line of the key at fault."""
        try:
            return _convert(values, cls, key)
        except ConfigError as exc:
            raise self.error(exc.key, str(exc)) from None

    def layer(self, key: str = "", values: Optional[Dict[str, Any]] = None) -> Layer:
        """The mapping at ``key`` (the whole file by default, or ``values`` read from there) as a config
        layer whose errors name this file and the line of the key at fault."""
        prefix = f"{key}." if key else ""
        lines = {k[len(prefix):]: n for k, n in self.lines.items() if k.startswith(prefix)}
        if key in self.lines:
            lines[""] = self.lines[key]  # keys it does not set are blamed on the mapping's line
        return Layer(self.data if values is None else values, str(self.path), lines)


def _key_lines(node: yaml.Node, key: str = "") -> Dict[str, int]:
    """The 1-based line of the value at ``key`` and at every key path below it in a composed YAML node:
    ``{"": 1, "optim": 2, "optim.lr": 3, "eval": 5, "eval[0]": 5, "eval[0].name": 5}``."""
    lines = {key: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            child = str(getattr(k, "value", k))
            lines.update(_key_lines(v, f"{key}.{child}" if key else child))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_key_lines(v, f"{key}[{i}]"))
    return lines


def _line_at(lines: Dict[str, int], key: str) -> Optional[int]:
    """``lines[key]``, else the line of the nearest key above it (``eval[0].name``, ``eval[0]``, ``eval``, "")."""
    while key not in lines:
        if not key:
            return None
        key = key[:max(key.rfind("."), key.rfind("["), 0)]
    return lines[key]


def read_yaml_file(path: str | Path, what: str = "config file") -> YamlFile:
    """A YAML file whose top level is a mapping, with its lines; a missing file or bad YAML is one clear error."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        where, problem, caret = _yaml_error(exc)
        raise ConfigError(f"{path}{where}: could not parse YAML: {problem}{caret}") from None
    if data is None:
        return YamlFile(path, {}, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))  # parsed above: where each value is
    del lines[""]  # an error that no key locates names the file alone
    return YamlFile(path, data, lines)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> Dict[str, Any]:
    """The top-level mapping of a YAML file (``read_yaml_file`` without the lines)."""
    return read_yaml_file(path, what).data


def _yaml_error(exc: yaml.YAMLError) -> Tuple[str, str, str]:
    """PyYAML's error as (``:line:column`` or "", the problem on one line, "\n" + its caret lines or ""):
    its own message starts with the context ("while parsing a flow sequence") and a made-up file name."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: an offset, no mark
        return "", f"{str(exc).splitlines()[0]} (character {exc.position + 1})", ""
    mark, problem = exc.problem_mark, exc.problem
    if exc.context and exc.context_mark:
        problem += f" ({exc.context} at {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
    snippet = mark.get_snippet() or ""
    shown = snippet.splitlines()[0].strip() if snippet else ""  # the end of the text has nothing to point at
    return f":{mark.line + 1}:{mark.column + 1}", problem, f"\n{snippet}" if shown else ""


def load_config(path: str | Path, overrides: Optional[Dict[str, Any]] = None, flags: Sequence[str] = ()) -> Config:
    """A YAML config file, then ``overrides`` (dotted keys), then ``--set key=value`` flags."""
    layers = [read_yaml_file(path).layer()]
    if overrides:
        layers.append(Layer(overrides, f"overrides of {path}"))
    return compose([*layers, *set_flag_layers(flags)])


def set_flag_layers(flags: Sequence[str]) -> List[Layer]:
    """``["optim.lr=1e-3", "tricks=[crop,gf]"]`` → one layer per flag (values parsed as YAML), each
    named ``--set <flag>`` in errors."""
    layers = []
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {flag!r}: expected key=value, e.g. --set optim.lr=1e-3")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            _, problem, caret = _yaml_error(exc)
            raise ConfigError(f"--set {flag!r}: could not parse the value as YAML: {problem}{caret}") from None
        layers.append(Layer({key.strip(): parsed}, f"--set {flag}"))
    return layers


def set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 1e-3)`` sets d["optim"]["lr"], creating mappings on the way; a key
    under a value that is not a mapping (``data.val.limit`` where ``data.val`` is null) is a ConfigError
    whose ``key`` is that value's."""
    *parents, last = key.split(".")
    for depth, p in enumerate(parents):
        data = data.setdefault(p, {})
        if not isinstance(data, dict):
            above = ".".join(parents[: depth + 1])
            raise ConfigError(f"{above} is {yaml.safe_dump(data).splitlines()[0]}, not a mapping", above)
    data[last] = value


def to_dict(cfg: Config) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples → lists, as YAML writes them


def resolved_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=True)


def canonical_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def hashed_fields(cfg: Config) -> Dict[str, Any]:
    """The resolved config as ``config_hash`` sees it: less what cannot change a number (where outputs
    go, how many processes load the data, and what is cached). The protocols appear as the key they
    replaced wherever it could say the same (``LEGACY_EVAL_PROTOCOL``), so that every earlier run stays done."""
    d = without_other_methods(to_dict(cfg))
    for key in NUMBER_NEUTRAL:
        d.pop(key)
    d["data"].pop("num_workers")
    protocols = sorted(d.pop("eval_protocols"))
    legacy = [name for name, meant in LEGACY_EVAL_PROTOCOL.items() if sorted(meant) == protocols]
    d.update({"eval_protocol": legacy[0]} if legacy else {"eval_protocols": protocols})
    return d


def without_other_methods(d: Dict[str, Any]) -> Dict[str, Any]:
    """A config's dict without what its method does not read: the other methods' sections, and the
    ``method`` key itself for Sempart (the default), so that every config written before methods
    existed hashes as it did. Likewise ``backbone.rope_keys`` left to the backbone, ``distill`` without a teacher; with one, its teacher counts by
    config hash (a renamed teacher cell is the same teacher) and the export's folder not at all."""
    if d["backbone"]["rope_keys"] is None:  # the backbone's default: configs written before it hash as they did
        d["backbone"].pop("rope_keys")
    if d["distill"]["teacher"] is None:
        d.pop("distill")
    else:
        d["distill"].pop("teacher")
        d["distill"].pop("masks")
    for section in METHOD_SECTIONS:
        if section != d["method"]:
            d.pop(section)
    if d["method"] == DEFAULT_METHOD:
        d.pop("method")
    return d


def config_hash(cfg: Config) -> str:
    """sha256 of the canonical ``hashed_fields`` of the config."""
    return canonical_sha256(hashed_fields(cfg))


NUMBER_NEUTRAL = ("output_dir", "cache", "tracking")  # top-level sections no hash depends on (with data.num_workers)
