"""Score a folder of saliency maps, or the centred Gaussian prior, on a dataset, in numpy.

Maps ``<image id>.png`` (0–255, at their image's size) are read as float64 in [0, 1] and scored at
full size by ``SaliencyEvaluator`` (docs/evaluation.md#our-protocol); post-processing tricks run on the full-size map.
Scoring a few hundred maps takes less time than importing torch, so the plain path imports none: the
guided filter (``gf``) runs through ``segtricks.method.guided_filter_numpy``, the numbers of the torch trick
on CPU. Torch is imported only for what is torch: other tricks (``bf``), a protocol's centre-crop
view (torchvision's resize, ``segtricks.evaluation.protocols``), and kept samples (tensors, for the
grid's figures). ``check_post_tricks`` and ``check_foreground`` are the checks the model evaluation
shares.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np
from tqdm.auto import tqdm

from segtricks import errors
from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import (GT_THRESHOLD, IMAGE_SUFFIXES, DatasetError, Sample, Skipped, build_dataset,
                                load_or_skip, open_image)
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.evaluation.protocols import Protocol, get_protocol, reference_boxes, reference_mask, reference_view
from segtricks.registry import UnknownNameError, registered_names


def _gf_on_map(mask: np.ndarray, rgb: np.ndarray, cfg: Config) -> np.ndarray:
    """The ``gf`` trick (segtricks.method.tricks) on one float32 map (H, W) and its image (3, H, W)."""
    from segtricks.method.guided_filter_numpy import guided_filter_planes  # OpenCV: only when asked for

    out = guided_filter_planes(mask[None], np.ascontiguousarray(rgb, dtype=np.float32)[None], cfg.gf.radius,
                               cfg.gf.eps)[0]
    return np.clip(out, 0, 1, out=out)


# Post-processing tricks with a numpy implementation, the same numbers as the registered trick.
NUMPY_TRICKS: Dict[str, Callable[[np.ndarray, np.ndarray, Config], np.ndarray]] = {"gf": _gf_on_map}


def check_post_tricks(tricks: Sequence[str]) -> None:
    """Every name a registered post-processing trick. Names are checked without importing the tricks
    registry (torch); the stage of a name outside NUMPY_TRICKS is looked up in it."""
    known = registered_names("segtricks.method.tricks", "TRICKS", ("register_post_trick",))
    for name in tricks:
        if name not in known:
            raise UnknownNameError(f"unknown trick {name!r}; registered tricks: {', '.join(known)}")
    if all(name in NUMPY_TRICKS for name in tricks):
        return
    from segtricks.method.tricks import TRICKS, get_tricks

    for trick in get_tricks(tricks):
        if trick.stage != "post":
            post = [n for n in TRICKS.names() if TRICKS.get(n).stage == "post"]
            raise errors.BadInput(f"trick {trick.name!r} is a training trick; evaluation applies only "
                                  f"post-processing tricks ({', '.join(post)})")


def check_foreground(evaluator: SaliencyEvaluator, ref: DatasetRef) -> None:
    """Refuse scores against ground truth that is all background: IoU, F and recall then say nothing
    about the predictions (a wrong masks folder, or masks the binarisation rule does not fit)."""
    if evaluator.n and not any(row.get("object_ratio", 0) > 0 for row in evaluator.rows):
        where = f" ({ref.root})" if ref.root else ""
        raise DatasetError(f"dataset {ref.name!r}{where}: none of the {evaluator.n} ground-truth masks has a "
                           f"foreground pixel (> {GT_THRESHOLD}, or 1 in 0/1 masks); check its masks, nothing was scored")


def find_map(maps_dir: Path, image_id: str) -> Path:
    for suffix in (".png",) + IMAGE_SUFFIXES:
        path = maps_dir / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise DatasetError(f"no saliency map for image {image_id!r} in {maps_dir} (expected {image_id}.png)")


def centre_prior(h: int, w: int, sigma: float = 0.25) -> np.ndarray:
    """A centred Gaussian map exp(−d²/2σ²), d the distance to the centre in units of each side."""
    y = (np.arange(h, dtype=np.float64) + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float64) + 0.5) / w - 0.5
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))


def read_map(maps_dir: Path, sample: Sample) -> np.ndarray:
    """The sample's map as float64 in [0, 1]; a missing, unreadable or wrongly sized map is a
    DatasetError naming the file."""
    path = find_map(maps_dir, sample.id)
    soft = np.asarray(open_image(path, "L"), dtype=np.float64) / 255.0
    if soft.shape != (sample.image.height, sample.image.width):
        raise DatasetError(f"map {path} is {soft.shape[1]}×{soft.shape[0]} but image {sample.id} is "
                           f"{sample.image.width}×{sample.image.height}; maps must have their image's size")
    return soft


def postprocess_map(soft: np.ndarray, rgb: np.ndarray, tricks: Sequence[str], cfg: Config) -> np.ndarray:
    """The post-processing ``tricks`` in order on a float64 map (H, W) with its image (3, H, W) in
    [0, 1], in float32 as the torch tricks run; float64 back. Tricks without a numpy implementation
    run on tensors that share the arrays' memory and strides."""
    mask = soft.astype(np.float32)
    for name in tricks:
        if name in NUMPY_TRICKS:
            mask = NUMPY_TRICKS[name](mask, rgb, cfg)
        else:
            import torch

            from segtricks.method.tricks import postprocess
            mask = postprocess(torch.from_numpy(mask)[None, None], torch.from_numpy(rgb)[None], [name],
                               cfg)[0, 0].numpy()
    return mask.astype(np.float64)


def evaluate_maps(maps_dir: str | Path | None, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                  with_structure: bool = True, progress: bool = True, keep_samples: int = 0,
                  protocol: str | Protocol = "ours") -> SaliencyEvaluator:
    """Score a folder of grayscale maps ``<id>.png`` (0–255, the ground truth's size) on ``ref``.

    ``maps_dir=None`` scores the centred Gaussian prior instead (the no-learning baseline). Under a
    ``centre_crop`` protocol (the reference's) map, image and ground truth are scored in the reference's
    centre-crop view; BatchNorm and inversion do not apply to maps.
    The first ``keep_samples`` (id, image, mask, map) are kept in ``evaluator.samples``, as tensors.
    """
    check_post_tricks(tricks)
    protocol = get_protocol(protocol)
    if maps_dir is not None:
        maps_dir = Path(maps_dir)
        if not maps_dir.is_dir():
            raise DatasetError(f"maps folder {maps_dir} does not exist")
    raw = build_dataset(ref)
    if not (raw.has_masks or raw.has_boxes):
        raise DatasetError(f"dataset {ref.name!r} has neither masks nor boxes to evaluate against")
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    for s in raw.skipped:
        evaluator.skip(s.id, s.reason)
    label = maps_dir.name if maps_dir is not None else "centre prior"
    size = cfg.data.image_size
    uses_torch = protocol.centre_crop or keep_samples > 0 or not all(n in NUMPY_TRICKS for n in tricks)
    if uses_torch:
        import torch

        from segtricks.runtime.threads import one_thread
    with one_thread() if uses_torch else nullcontext():  # small per-image tensor ops (segtricks.runtime.threads)
        for index in tqdm(range(len(raw)), desc=f"evaluate {label} on {ref.name}", disable=not progress):
            sample = load_or_skip(raw, index, ref.on_error)
            if isinstance(sample, Skipped):
                evaluator.skip(sample.id, sample.reason)
                continue
            try:
                soft = (centre_prior(sample.image.height, sample.image.width) if maps_dir is None
                        else read_map(maps_dir, sample))
            except DatasetError as exc:
                if ref.on_error != "skip":
                    raise
                warnings.warn(f"skipped: {exc}", errors.SegtricksWarning)
                evaluator.skip(sample.id, str(exc))
                continue
            mask, boxes = sample.mask, sample.boxes
            # the image (3, H, W) in [0, 1] only where it is used: a guide, a view, a sample
            rgb = ((np.asarray(sample.image, dtype=np.float32) / 255.0).transpose(2, 0, 1)
                   if tricks or uses_torch else None)
            if protocol.centre_crop:
                boxes = reference_boxes(boxes, *rgb.shape[-2:], size)
                soft = reference_view(torch.from_numpy(soft)[None], size)[0].numpy()
                rgb = reference_view(torch.from_numpy(rgb), size).numpy()
                mask = None if mask is None else reference_mask(torch.from_numpy(mask), size).numpy()
            if tricks:
                soft = postprocess_map(soft, rgb, tricks, cfg)
            evaluator.update(soft, mask, sample.id, boxes=boxes)
            if len(evaluator.samples) < keep_samples:
                evaluator.samples.append((sample.id, torch.from_numpy(rgb), None if mask is None
                                          else torch.from_numpy(mask), torch.from_numpy(soft).float()))
    check_foreground(evaluator, ref)
    return evaluator
