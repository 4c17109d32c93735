"""Score saliency maps or a trained run on a dataset, print a table, optionally save per-image records.

    python -m segtricks.evaluate --maps DIR --dataset folder --root DATASET_FOLDER [--post gf]
    python -m segtricks.evaluate --run outputs/demo_cell --dataset synthetic --split test [--post gf]
    python -m segtricks.evaluate --centre-prior --dataset synthetic --split test

``--post`` names post-processing tricks (gf, bf) applied in order; ``--out FILE.csv|.parquet``
writes one row per image (id, object ratio, IoU, Acc, predicted box, CorLoc hit, …).
``--eval-protocol reference`` scores as the reference implementation did (BatchNorm in train mode,
inversion per batch of 8, metrics on a centre crop of the resized ground truth; docs/evaluation.md#the-references-protocol)
instead of our protocol (docs/evaluation.md#our-protocol), to compare with the paper's tables.

Arguments are checked, and maps scored (``segtricks.evaluation.saliency_maps``), without importing torch; it
is imported for ``--run``, ``--post bf`` and the reference protocol on maps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

from segtricks import errors
from segtricks.engine.folder import TrainingFolder
from segtricks.files import check_writable_folder
from segtricks.config.schema import Config, DatasetRef, dataset_ref_problems, load_config
from segtricks.config.vocabulary import METRICS
from segtricks.evaluation.saliency_maps import evaluate_maps
from segtricks.evaluation.protocols import PROTOCOLS

if TYPE_CHECKING:
    import torch


def load_run(folder: TrainingFolder, which: str = "best") -> tuple[torch.nn.Module, Config]:
    """The model of a training folder (``config.yaml`` + ``best.pt`` or ``last.pt``)."""
    folder.require_finished("--run", which)
    cfg = load_config(folder.config)
    from segtricks.engine.training import Training  # torch and timm: only to evaluate a model

    return Training(cfg, folder.dir).model(which=which), cfg


def format_table(results: Dict[str, float]) -> str:
    names = [p for p in METRICS if p in results]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {n} | {results[n]:.2f} |" if METRICS[n].percent else f"| {n} | {results[n]:.4f} |" for n in names]
    lines.append(f"| n_images | {int(results['n_images'])} |")
    lines.append(f"| skipped | {int(results['skipped'])} |")
    return "\n".join(lines)


@errors.command
def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=errors.prog("segtricks.evaluate"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--maps", type=Path, help="folder of <image id>.png saliency maps")
    source.add_argument("--run", type=Path, help="training folder (config.yaml + best.pt)")
    source.add_argument("--centre-prior", action="store_true", help="score a centred Gaussian map (σ = 0.25)")
    ap.add_argument("--checkpoint", default="best", choices=["best", "last"])
    ap.add_argument("--dataset", required=True, help="registered dataset name")
    ap.add_argument("--root", help="dataset folder (default: $SEGTRICKS_DATA/<release folder>)")
    ap.add_argument("--split", default="test", help="split for datasets that have several (synthetic)")
    ap.add_argument("--limit", type=int, help="only the first N images")
    ap.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or inconsistent files")
    ap.add_argument("--post", nargs="*", default=[], help="post-processing tricks, in order (gf, bf)")
    ap.add_argument("--out", type=Path, help="per-image records, .csv or .parquet")
    ap.add_argument("--eval-protocol", choices=PROTOCOLS.names(), default="ours",
                    help="ours (docs/evaluation.md#our-protocol, default) or the reference implementation's (docs/evaluation.md#the-references-protocol)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:  # 0 read as "no limit" once: ask for what is meant
        raise errors.BadInput(f"--limit {args.limit}: give a positive number of images, or leave --limit out for all")
    if args.out is not None:  # checked before the evaluation, not after it ran
        if args.out.suffix not in (".csv", ".parquet"):
            raise errors.BadInput(f"--out {args.out}: use a .csv or .parquet file name")
        if args.out.is_dir():
            raise errors.BadInput(f"--out {args.out} is a folder; give a file name ending in .csv or .parquet")
        check_writable_folder(args.out.parent, "--out")
    ref = DatasetRef(args.dataset, args.root, args.split, args.limit, "skip" if args.skip_bad else "raise")
    for _, value, rule in dataset_ref_problems(ref, "--dataset"):  # before torch, not as a missing dataset
        raise errors.BadInput(f"--split {value}: expected {rule}")
    if args.maps or args.centre_prior:
        cfg = Config()
        evaluator = evaluate_maps(args.maps, cfg, ref, args.post, protocol=args.eval_protocol)
        weights = f"maps from {args.maps}" if args.maps else "centred Gaussian prior (σ = 0.25)"
    else:
        folder = TrainingFolder(args.run)
        model, cfg = load_run(folder, args.checkpoint)
        from segtricks.evaluation.method_evaluation import evaluate_method  # torch, as load_run
        from segtricks.evaluation.model_evaluation import evaluate_model
        from segtricks.methods.registry import training_recipe
        from segtricks.runtime.device import resolve_device

        device = resolve_device(args.device)
        method = training_recipe(cfg).as_method(cfg, model.to(device))
        if method is not None:  # FOUND: image by image at each image's size, under our protocol only
            if args.eval_protocol != "ours":
                raise errors.BadInput(f"--eval-protocol {args.eval_protocol}: the reference protocol is how the "
                                      f"paper's code evaluated Sempart; {args.run} trained method {cfg.method!r}, "
                                      f"scored under ours only")
            evaluator = evaluate_method(method, cfg, ref, args.post, device)
        else:
            evaluator = evaluate_model(model, cfg, ref, args.post, device, protocol=args.eval_protocol,
                                       cache_dir=folder.predictions)
        weights = f"{cfg.backbone.name} ({model.backbone.weights_id})"
    results = evaluator.results()
    print(f"\n{args.dataset} ({ref.split if args.dataset == 'synthetic' else ref.root or '$SEGTRICKS_DATA'}), "
          f"{weights}, post-processing: {', '.join(args.post) or 'none'}, "
          f"evaluation protocol: {args.eval_protocol}\n")
    print(format_table(results))
    if evaluator.skipped:
        print(f"\nskipped {len(evaluator.skipped)} image(s) that could not be read:")
        for image_id, reason in evaluator.skipped:
            print(f"  {image_id}: {reason}")
    if args.out:
        records = evaluator.records()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".parquet":
            records.to_parquet(args.out)
        else:
            records.to_csv(args.out, index=False)
        print(f"\nper-image records: {args.out} ({len(records)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
