"""The other systems' cost per image, and the eigensolvers against the authors' dense ``eigh``.

    python benchmarks/methods.py                 # 12 SOD photos (481×321), ViT-S/16 and S/8, 1 and 2 threads
    python benchmarks/methods.py --images 30 --threads 1

For each backbone (random-init: the same arithmetic as pretrained weights), on real photos from
``../shared/data/sod300`` at their own size: the backbone's keys, then per image, interleaved on the
same affinity, TokenCut's second eigenvector by the dense reference path (``scipy.linalg.eigh`` of the
generalised problem, as TokenCut calls it), by ARPACK on the normalised form, and by ``torch.linalg.eigh``;
then each method end to end (``predict``, its default solver; FOUND with an untrained head), and the
bilateral-solver target FOUND computes for each training image at its training size (224², the cost that
dominates a FOUND training step; a step refines each of its 50 images once, twice while the background
term is on). Each thread count runs in its own
process (torch's, OpenBLAS's and OpenMP's thread pools all set before anything is imported).
Medians over the images; the ratio is dense ÷ fast, measured in the same process, image by image.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SOD = Path(__file__).resolve().parents[2] / "shared" / "data" / "sod300"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def measure(images: int) -> dict:
    """This process's medians (ms per image) for each backbone and step."""
    import numpy as np
    import torch
    from PIL import Image

    from segtricks.config.schema import config_from_dict
    from segtricks.methods.found import Found, FoundRecipe, refined_by_bilateral_solver
    from segtricks.methods.registry import build_method
    from segtricks.methods.spectral import second_eigenvector
    from segtricks.methods.patches import pad_to_patches

    paths = sorted((SOD / "images").glob("*.jpg"))[:images]
    out = {}
    for backbone in ("dino_vits16", "dino_vits8"):
        times = {k: [] for k in ("keys", "dense", "arpack", "torch", "tokencut", "lost", "deep_spectral", "found",
                                 "found_target")}
        methods = {}
        for name in ("tokencut", "lost", "deep_spectral"):
            cfg = config_from_dict({"method": name, "backbone": {"name": backbone, "weights": "random-init"}})
            methods[name] = build_method(cfg, torch.device("cpu"))
        found_cfg = config_from_dict({"method": "found", "backbone": {"name": backbone, "weights": "random-init"}})
        methods["found"] = Found(found_cfg, FoundRecipe().build_model(found_cfg))
        size = 224  # FOUND's training size
        tokencut = methods["tokencut"]
        for path in paths:
            image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
            x = pad_to_patches(tokencut.normalise(image), tokencut.patch)
            t = time.perf_counter()
            keys = tokencut.keys(x)
            times["keys"].append(time.perf_counter() - t)
            feats = torch.nn.functional.normalize(keys, dim=1)
            cosine = feats @ feats.T
            affinity = torch.full_like(cosine, 1e-5, dtype=torch.float64)
            affinity[cosine > 0.2] = 1.0
            degree = affinity.sum(1)
            for solver in ("dense", "arpack", "torch"):  # interleaved: each image meets the same load
                t = time.perf_counter()
                second_eigenvector(affinity, degree, solver)
                times[solver].append(time.perf_counter() - t)
            for name, method in methods.items():
                t = time.perf_counter()
                method.predict(image, "saliency")
                times[name].append(time.perf_counter() - t)
            square = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear")
            grid = size // tokencut.patch
            rough = torch.zeros(1, grid, grid)
            rough[:, grid // 4: 3 * grid // 4, grid // 4: 3 * grid // 4] = 1  # a central square to refine
            t = time.perf_counter()
            refined_by_bilateral_solver(rough, square, found_cfg.found.bs_iou)
            times["found_target"].append(time.perf_counter() - t)
        ratio = statistics.median(d / a for d, a in zip(times["dense"], times["arpack"]))
        out[backbone] = {k: 1e3 * statistics.median(v) for k, v in times.items()} | {
            "tokens": int(keys.shape[0]), "dense/arpack": ratio}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, each in its own process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the thread pools were sized by the environment before any import; torch's too
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        print(json.dumps(measure(args.images)))
        return
    if not SOD.is_dir():
        sys.exit(f"{SOD} is absent: this benchmark measures on the SOD photos of ../shared/data")
    print("| backbone | tokens | threads | keys | TokenCut eigvec: dense | arpack | torch | dense ÷ arpack | "
          "TokenCut | LOST | Deep Spectral | FOUND | FOUND's BS target (224²) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for threads in args.threads.split(","):
        env = {**os.environ, **{v: threads for v in THREAD_VARIABLES}}
        done = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images)], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        for backbone, r in json.loads(done.stdout.strip().splitlines()[-1]).items():
            print(f"| {backbone} | {r['tokens']} | {threads} | {r['keys']:.0f} ms | {r['dense']:.0f} ms | "
                  f"{r['arpack']:.0f} ms | {r['torch']:.0f} ms | {r['dense/arpack']:.1f}× | {r['tokencut']:.0f} ms | "
                  f"{r['lost']:.0f} ms | {r['deep_spectral']:.0f} ms | {r['found']:.0f} ms | "
                  f"{r['found_target']:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
