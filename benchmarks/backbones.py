"""The backbones beyond the paper against DINO ViT-S/8: key extraction, a training step and its peak memory.

    python benchmarks/backbones.py                 # the grids' sizes: S/8 at 320², DINOv2 S/14 at 322², DINOv3 S/16 at 320²
    python benchmarks/backbones.py --tiny          # 56²/64², batch 2: CI keeps it working

For each backbone at its grid's size (``experiments/table3.yaml``, ``experiments/modern.yaml``): the keys of
one image (what evaluation and the training-free methods pay per image), one Sempart training step at
batch 8 without tricks (``benchmarks/core.py``'s ``train_step_fn``), each at 1 and 2 threads, and the
step's peak memory (``benchmarks/memory.py``, one process per backbone). Timings are interleaved: every
round times each backbone in turn, so that the machine's drift falls on all of them; ratios are against
DINO S/8 measured in the same run. Random-init backbones: the same arithmetic as pretrained ones.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from core import time_ms, train_step_fn
from segtricks.models.backbones import build_backbone

# (backbone, size): the grids' training sizes; DINOv2's 322 = 23 patches of 14 (320 is not a multiple)
PAPER: List[Tuple[str, int]] = [("dino_vits8", 320), ("dinov2_vits14", 322), ("dinov2_vits14_reg", 322),
                                ("dinov3_vits16", 320)]
TINY: List[Tuple[str, int]] = [("dino_vits8", 56), ("dinov2_vits14", 56), ("dinov2_vits14_reg", 56),
                               ("dinov3_vits16", 64)]


def keys_fn(name: str, size: int):
    backbone = build_backbone(name, "random-init")
    image = torch.rand(1, 3, size, size)

    def keys() -> None:
        with torch.no_grad():
            backbone(image)
    return keys


def peak_memory(name: str, size: int, batch: int) -> int:
    """Bytes: the resident-set high-water mark of one training step, in its own process."""
    cmd = [sys.executable, str(Path(__file__).parent / "memory.py"), "--one", "none", "--json", "--no-breakdown",
           "--backbone", name, "--size", str(size), "--batch", str(batch), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: peak memory of {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="56²/64², batch 2")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each times every backbone once)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    shapes = TINY if args.tiny else PAPER
    batch = 2 if args.tiny else 8
    keys_ms: Dict[Tuple[str, int], List[float]] = {}
    step_ms: Dict[Tuple[str, int], List[float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        keys = {name: keys_fn(name, size) for name, size in shapes}
        steps = {name: train_step_fn([], torch.device("cpu"), backbone=name, size=size, batch=batch)
                 for name, size in shapes}
        for r in range(args.rounds):
            for name, _ in shapes:
                keys_ms.setdefault((name, threads), []).append(time_ms(keys[name], 3))
                step_ms.setdefault((name, threads), []).append(time_ms(steps[name], 1))
                print(f"round {r + 1}/{args.rounds}, {threads} thread(s): {name} done", file=sys.stderr, flush=True)
    peaks = {name: peak_memory(name, size, batch) for name, size in shapes}

    def mean(values: List[float]) -> float:
        return sum(values) / len(values)

    base = shapes[0][0]
    print(f"\nCPU, torch {torch.__version__}; batch {batch}; {args.rounds} interleaved rounds; random-init\n")
    print("| backbone | size | patches | threads | keys of one image, ms | × S/8 | training step, ms | × S/8 | peak memory of a step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for name, size in shapes:
            patch = build_backbone(name, "random-init").patch_size
            k, s = mean(keys_ms[(name, threads)]), mean(step_ms[(name, threads)])
            kb, sb = mean(keys_ms[(base, threads)]), mean(step_ms[(base, threads)])
            print(f"| {name} | {size}² | {size // patch}² | {threads} | {k:.0f} | {k / kb:.2f} | {s:.0f} | {s / sb:.2f} "
                  f"| {peaks[name] / 2 ** 30:.2f} GiB |")


if __name__ == "__main__":
    main()
