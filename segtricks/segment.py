"""Segment your own images with a trained model: one PNG mask per image, at the image's size.

    python -m segtricks.segment --run <run id | runs:/<id>/model | training folder> --images DIR_OR_GLOB --out DIR
                                [--post gf|bf] [--soft] [--overlay] [--overwrite] [--batch-size N] [--device auto]

``--run``: a training folder (``config.yaml`` + ``best.pt``), an MLflow model URI (``runs:/<id>/model``,
loaded by ``mlflow.pyfunc``), or a cell's run id in the tracking store, whole or its first 8 characters
as the grid's summary prints them (the run's logged model, or the logged model of the run it shares its
training with, else its training folder on this machine).
Masks are ``<out>/<image name>.png``: binary (0/255, at 0.5) by default, 8-bit soft with ``--soft``;
``--overlay`` also writes ``<out>/overlays/<image name>.png`` (the image, the mask tinted red). The
preprocessing and the foreground selection are the evaluation's (``segtricks.inference.predictor``);
``--post`` post-processes as a cell's ``gf``/``bf`` tricks do. Without it, a cell's run id gets the
cell's own post-processing (the crop+gf cell's masks are filtered, as its metrics were) and a
training folder or model URI none; ``--post`` with no names turns it off.
Every PNG is written atomically; a rerun skips images whose outputs exist (``--overwrite`` redoes them);
an unreadable image is skipped and listed at the end. Arguments are checked before torch is imported.
"""
from __future__ import annotations

import argparse
import glob
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from segtricks import errors
from segtricks.data.datasets import IMAGE_SUFFIXES
from segtricks.engine.folder import TrainingFolder
from segtricks.files import check_writable_folder, write_png
from segtricks.config.schema import DEFAULT_METHOD, METHOD_REGISTRY, load_config
from segtricks.registry import registered_attributes
from segtricks.tracking import tags
from segtricks.tracking.uri import sqlite_path, tracking_uri

OVERLAYS = "overlays"
POST_TRICKS = ("gf", "bf")  # the tricks segtricks.method.tricks registers as post-processing
TINT = np.array([255, 0, 0], dtype=np.float32)  # the overlay's mask colour, blended at half strength


def list_images(spec: str) -> Tuple[Path, List[Path]]:
    """The folder the images are in (for a glob: its part before the first wildcard) and the image
    files, sorted; a missing or empty folder, or two images of the same name, is one error line."""
    if glob.has_magic(spec):
        parts = Path(spec).parts
        root = Path(*parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))] or ".")
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    else:
        root = Path(spec)
        if not root.is_dir():
            raise errors.BadInput(f"--images {spec}: no such folder")
        paths = sorted(p for p in root.iterdir() if p.is_file())
    paths = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise errors.BadInput(f"--images {spec}: no images ({', '.join(IMAGE_SUFFIXES)}) there")
    stems: dict = {}
    for p in paths:
        if p.stem in stems:
            raise errors.BadInput(f"--images {spec}: {stems[p.stem]} and {p} would both write {p.stem}.png; "
                                  f"select one of them with a glob")
        stems[p.stem] = p
    return root, paths


def check_out(out: Path, images_root: Path, overlay: bool) -> None:
    """``--out`` is a writable folder (or can be made one) outside the images folder; made here."""
    resolved, root = out.resolve(), images_root.resolve()
    if resolved == root or root in resolved.parents:
        raise errors.BadInput(f"--out {resolved} is inside the images folder {root}: the masks would be read as "
                              f"images by the next run; choose a folder outside it")
    check_writable_folder(out / OVERLAYS if overlay else out, "--out")
    (out / OVERLAYS if overlay else out).mkdir(parents=True, exist_ok=True)


@dataclass
class Source:
    """What ``--run`` names: a training folder or an MLflow model URI, and for a cell's run id the cell
    and its post-processing tricks."""

    model: TrainingFolder | str
    cell: Optional[str] = None
    cell_post: Optional[List[str]] = None


def model_source(run: str, uri: Optional[str]) -> Source:
    """The training folder or the MLflow model URI that ``--run`` names (see the module docstring)."""
    folder = TrainingFolder(Path(run))
    if run.startswith(("runs:/", "models:/")):
        return Source(run)
    if folder.dir.is_dir():
        folder.require_finished("--run")
        return Source(folder)
    store_uri = tracking_uri(uri)
    db = sqlite_path(store_uri)
    if db is not None and not db.is_file():
        raise errors.BadInput(f"--run {run}: not a training folder, and no MLflow store at {db} to find a run "
                              f"of that id in (pass --tracking-uri, or run where the grid ran)")
    from segtricks.inference.mlflow_model import logged_model_id
    from segtricks.tracking.store import Store

    store = Store(store_uri)
    found = store.find_run(run)
    if found is None:
        raise errors.BadInput(f"--run {run}: no run with that id (or id prefix) in {store.uri}, nor a training "
                              f"folder of that name; copy the run id from the MLflow UI or the grid's summary")
    cell, shared = found.data.tags.get(tags.CELL, "(no cell tag)"), found.data.tags.get(tags.MODEL_FROM_RUN)
    method = found.data.params.get("method", DEFAULT_METHOD)
    if not registered_attributes(*METHOD_REGISTRY).get(method, {}).get("trains", False):
        raise errors.BadInput(f"--run {run} (cell {cell}) ran method {method!r}, which trains no model: segment "
                              f"predicts with a trained model; give the run id of a cell of a method that trains "
                              f"(sempart, found)")
    post = [t for t in found.data.tags.get(tags.TRICKS, "").split(",") if t in POST_TRICKS]
    for run_id in filter(None, (found.info.run_id, shared)):
        if logged_model_id(store.run(run_id)) is not None:
            return Source(f"runs:/{run_id}/model", cell, post)
    training = found.data.params.get("output_dir")
    if training and TrainingFolder(Path(training)).is_finished():
        return Source(TrainingFolder(Path(training)), cell, post)
    where = f" or on the run it shares its training with ({shared})" if shared else ""
    raise errors.BadInput(f"--run {run} (cell {cell}): the run has no model: no MLflow model logged on it{where}, "
                          f"and no training folder {training or '(no output_dir param)'} on this machine; "
                          f"train the cell, or pass its training folder")


def outputs(out: Path, image: Path, overlay: bool) -> List[Path]:
    return [out / f"{image.stem}.png"] + ([out / OVERLAYS / f"{image.stem}.png"] if overlay else [])


def overlay_of(image_path: Path, soft: np.ndarray) -> np.ndarray:
    from PIL import Image

    with Image.open(image_path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    alpha = 0.5 * soft[..., None]
    return (rgb * (1 - alpha) + TINT * alpha).round().astype(np.uint8)


def load_predictor(source: TrainingFolder | str, post: List[str], device: str, batch_size: Optional[int], uri: Optional[str]):
    """The predictor of a training folder, or of an MLflow model loaded by ``mlflow.pyfunc`` from the
    store ``uri`` names (``--tracking-uri``, else the default one)."""
    from segtricks.inference.predictor import Predictor  # torch, timm: only once the arguments are right

    if isinstance(source, TrainingFolder):
        from segtricks.engine.training import Training

        return Predictor.from_training(Training(load_config(source.config), source.dir), post, device, batch_size)
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    try:
        with _use_tracking_uri(tracking_uri(uri)):  # load_model reads runs:/ from the global tracking URI
            loaded = mlflow.pyfunc.load_model(source).unwrap_python_model().predictor
    except mlflow.exceptions.MlflowException as exc:
        raise errors.BadInput(f"--run {source}: {str(exc).splitlines()[0]}") from None
    return Predictor(loaded.model, loaded.cfg, post, device, batch_size)


@errors.command
def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=errors.prog("segtricks.segment"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run id, runs:/<id>/model, or training folder")
    ap.add_argument("--images", required=True, help="folder of images, or a glob ('photos/*.jpg')")
    ap.add_argument("--out", required=True, type=Path, help="folder for the masks (not inside the images folder)")
    ap.add_argument("--post", nargs="*", choices=POST_TRICKS,
                    help="post-processing tricks, in order (default: a cell run's own; none for a folder or URI)")
    ap.add_argument("--soft", action="store_true", help="8-bit soft masks instead of binary ones")
    ap.add_argument("--overlay", action="store_true", help="also write image+mask overlays in <out>/overlays")
    ap.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    ap.add_argument("--batch-size", type=int, help="images per batch (default: the model's optim.batch_size)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    ap.add_argument("--tracking-uri", help="store to find a run id or runs:/ model in (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = ap.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise errors.BadInput(f"--batch-size {args.batch_size}: use a positive number")
    root, images = list_images(args.images)
    check_out(args.out, root, args.overlay)
    source = model_source(args.run, args.tracking_uri)
    post = args.post if args.post is not None else source.cell_post or []
    if args.post is None and source.cell_post:
        print(f"post-processing: {', '.join(post)}, as cell {source.cell} was evaluated (--post with no names: none)")
    todo = [p for p in images if args.overwrite or not all(o.exists() for o in outputs(args.out, p, args.overlay))]
    if not todo:
        print(f"all {len(images)} mask(s) exist in {args.out} (--overwrite to redo them)")
        return 0
    from segtricks.runtime.device import resolve_device  # torch: only once the arguments are right

    resolve_device(args.device)  # a device this machine lacks: one line, before the model is loaded
    predictor = load_predictor(source.model, post, args.device, args.batch_size, args.tracking_uri)
    from tqdm.auto import tqdm

    from segtricks.inference.predictor import ImageFiles

    by_id = {p.stem: p for p in todo}
    skipped: List[str] = []
    with tqdm(total=len(todo), desc="segment", unit="image") as bar, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="skipped: ")  # listed once, at the end
        for ids, masks, bad in predictor.batches(ImageFiles(todo), predictor.cfg.data.num_workers):
            skipped += [by_id[s.id].name for s in bad]
            for image_id, soft in zip(ids, masks):
                mask = (soft * 255).round() if args.soft else (soft > 0.5) * 255.0
                paths = outputs(args.out, by_id[image_id], args.overlay)
                write_png(paths[0], mask.astype(np.uint8))
                if args.overlay:
                    write_png(paths[1], overlay_of(by_id[image_id], soft))
            bar.update(len(ids) + len(bad))
    kept = len(images) - len(todo)
    print(f"wrote {len(todo) - len(skipped)} mask(s) to {args.out}"
          + (f"; {kept} existed and were kept (--overwrite to redo them)" if kept else ""))
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
