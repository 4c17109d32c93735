"""What the evaluation caches save: one evaluation with no cache, one whose masks are cached (the GF
cell of a trained baseline), one whose backbone keys are cached (a second training on the backbone).

    python benchmarks/evaluation_cache.py [--rounds N] [--images N]
    python benchmarks/evaluation_cache.py --backbone dino_vits8 --size 320 --images 24   # the paper's size

Random-init models (timings equal a trained model's). The three are interleaved per round, each on a
fresh cache folder where it must build its cache; ratios are against "no cache" in the same round.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from segtricks.config.schema import DatasetRef, load_config
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.models.model import build_model

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo_cell.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--backbone", default="demo_vit4")
    ap.add_argument("--size", type=int, default=None, help="prediction size (default: the demo cell's)")
    args = ap.parse_args()
    overrides = {"backbone.name": args.backbone, "backbone.weights": "random-init"}
    if args.size:
        overrides.update({"data.image_size": args.size, "data.resize_short": args.size})
    cfg = load_config(DEMO, overrides)
    torch.manual_seed(0)
    model, other = build_model(cfg).eval(), build_model(cfg).eval()
    other.head.load_state_dict({k: v + 0.01 for k, v in model.head.state_dict().items()})
    ref = DatasetRef("synthetic", split="test", limit=args.images)

    def timed(m, **caches) -> float:
        t0 = time.perf_counter()
        evaluate_model(m, cfg, ref, ["gf"], progress=False, **caches)
        return time.perf_counter() - t0

    rows = {"no cache": [], "masks cached (a GF cell)": [], "keys cached (another training)": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            masks, keys = Path(tmp) / "masks", Path(tmp) / "keys"
            evaluate_model(model, cfg, ref, [], progress=False, cache_dir=masks, keys_dir=keys)  # the first cell
            rows["no cache"].append(timed(model))
            rows["masks cached (a GF cell)"].append(timed(model, cache_dir=masks, keys_dir=keys))
            rows["keys cached (another training)"].append(timed(other, cache_dir=Path(tmp) / "other", keys_dir=keys))
    base = statistics.median(rows["no cache"])
    print(f"evaluation of {args.images} synthetic test images at {cfg.data.image_size}², {args.backbone} "
          f"(random-init), GF on, {torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}")
    print(f"| {'evaluation':<32} | {'median s':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 10}|")
    for name, times in rows.items():
        t = statistics.median(times)
        print(f"| {name:<32} | {t:>9.2f} | {base / t:>7.1f}× |")


if __name__ == "__main__":
    main()
