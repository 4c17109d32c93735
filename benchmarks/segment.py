"""``segment`` throughput on SOD300's 300 photos, against the same model's ``evaluate`` in the same run.

    python benchmarks/segment.py --run outputs/trainings/<hash> [--post gf] [--repeats 3] [--threads 1 2] [--limit N]

``--run`` is a training folder, e.g. one of the demo's (``python -m segtricks.ablate --grid demo``
leaves them in ``outputs/trainings/``). Three whole commands, each a fresh subprocess (imports and
the model's loading included, as a user waits for them), run in turn at each thread count with the
BLAS/OpenMP thread variables set:
- ``segment`` of the 300 images (``--overwrite``, so every mask is computed and written again);
- ``segment`` of one image: the start-up (imports, loading the model), so that the steady rate is
  the other images over the difference (the median of the rounds' differences);
- the baseline, ``evaluate --run`` of the same model on the same images (``--dataset folder``): the
  same preprocessing and prediction, plus reading the masks and scoring, minus writing PNGs. It runs
  on a copy of the training folder whose prediction cache is removed before each run, so that it
  predicts every image as ``segment`` does (and writes a cache of 300 small float16 masks).
Each figure is the median over ``--repeats`` rounds; the ratio is the median of the per-round ratios.
``--limit N`` times the first N photos only (a folder of links to them).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sod300"


def linked_subset(root: Path, n: int, into: Path) -> Path:
    """A dataset folder of links to the first ``n`` images of ``root`` and their masks."""
    for folder in ("images", "masks"):
        (into / folder).mkdir(parents=True)
    for image in sorted((root / "images").iterdir())[:n]:
        (into / "images" / image.name).symlink_to(image)
        mask = root / "masks" / f"{image.stem}.png"
        (into / "masks" / mask.name).symlink_to(mask)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="training folder (config.yaml + best.pt)")
    ap.add_argument("--post", nargs="*", default=[], choices=["gf", "bf"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, help="only the first N photos")
    args = ap.parse_args()
    if not (args.run / "best.pt").is_file():
        sys.exit(f"--run {args.run}: no best.pt there; pass a finished training folder "
                 f"(after the demo: one of outputs/trainings/*)")
    out = Path(tempfile.mkdtemp(prefix="segment-bench-"))
    sod = SOD if args.limit is None else linked_subset(SOD, args.limit, out / "sod")
    images = sorted((sod / "images").iterdir())
    post = ["--post", *args.post] if args.post else []
    model = out / "model"
    model.mkdir()
    for name in ("config.yaml", "best.pt"):
        shutil.copy(args.run / name, model / name)
    segment = [sys.executable, "-m", "segtricks.segment", "--run", str(args.run), "--overwrite", *post]
    cases = {
        "all": segment + ["--images", str(sod / "images"), "--out", str(out / "all")],
        "one": segment + ["--images", str(sod / "images" / f"{images[0].stem}.*"), "--out", str(out / "one")],
        "evaluate": [sys.executable, "-m", "segtricks.evaluate", "--run", str(model), "--dataset", "folder",
                     "--root", str(sod), *post],
    }

    def timed(cmd, threads):
        env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS")}}
        shutil.rmtree(model / "predictions", ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    load_before = os.getloadavg()
    rows = []
    for threads in args.threads:
        timed(cases["all"], threads)  # warm-up: files and modules in the page cache
        rounds = []
        for round_ in range(args.repeats):
            order = list(cases) if round_ % 2 == 0 else list(cases)[::-1]
            rounds.append({name: timed(cases[name], threads) for name in order})
        median = {name: statistics.median(r[name] for r in rounds) for name in cases}
        # the steady rate: a handful of images (--limit) can take less than the noise in the start-up
        extra = statistics.median(r["all"] - r["one"] for r in rounds)
        steady = f"{(len(images) - 1) / extra:.1f}" if extra > 0 else "–"
        ratio = statistics.median(r["evaluate"] / r["all"] for r in rounds)
        rows.append((threads, median, steady, ratio))
    load_after = os.getloadavg()
    print(f"\nsegment of SOD300 ({len(images)} photos), model {args.run}, post {args.post or 'none'}; "
          f"{args.repeats} interleaved rounds per thread count; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after, "
          f"on {os.cpu_count()} CPUs\n")
    print(f"| threads | segment {len(images)} s | images/s (whole command) | segment 1 s (start-up) | images/s (steady) "
          "| evaluate --run s (baseline) | evaluate / segment |")
    print("|---|---|---|---|---|---|---|")
    for threads, m, steady, ratio in rows:
        print(f"| {threads} | {m['all']:.2f} | {len(images) / m['all']:.1f} | {m['one']:.2f} | {steady} "
              f"| {m['evaluate']:.2f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
