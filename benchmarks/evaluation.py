"""Full SOD300 evaluation time: segtricks' streaming evaluator vs pysodmetrics, same maps, same run.

    python benchmarks/evaluation.py [--maps DSS] [--repeats 5] [--threads 1 2] [--device cpu|cuda]
                                    [--only metrics|command]

Two comparisons. **metrics**: both get the same in-memory maps (file reading is excluded) and compute
the same protocols:
max F of the mean F curve, adaptive F, MAE, S-measure (α 0.5), and the E-measure curve. The runs
alternate (ours, pysodmetrics, ours, …) at each torch thread count, so load that comes and goes on a
shared host hits both alike; the speed-up is the median of the per-pair ratios, and the host's load
average is printed with it. A second table prints each one's numbers, so "faster at equal numbers"
can be read off.

**command**: the whole ``python -m segtricks.evaluate --maps …`` command (imports, reading maps,
masks and images, every protocol, the table) against a script that reads the same maps and masks
with PIL and steps pysodmetrics' metrics over them, each a fresh subprocess, alternating, with the
BLAS/OpenMP thread variables set to each thread count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segtricks.evaluation.metrics import SaliencyEvaluator

SOD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sod300"
# The pysodmetrics loop a user would write, as one script: read each map and mask, step every metric.
PYSOD_LOOP = """
import sys
from pathlib import Path
import numpy as np
import py_sod_metrics as psm
from PIL import Image
sod, maps = Path(sys.argv[1]), sys.argv[2]
fm = psm.FmeasureV2(metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
metrics = (fm, psm.MAE(), psm.Smeasure(), psm.Emeasure())
for mask in sorted((sod / "masks").glob("*.png")):
    gt = np.asarray(Image.open(mask).convert("L")) > 128
    pred = np.asarray(Image.open(sod / "maps" / maps / mask.name).convert("L")) / 255.0
    for m in metrics:
        m.step(pred, gt, normalize=False)
print(fm.get_results()["fm"]["dynamic"].max(), metrics[1].get_results()["mae"], metrics[2].get_results()["sm"])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", default="DSS")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time at")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", choices=["metrics", "command"], help="run one of the two comparisons")
    args = ap.parse_args()
    if not SOD.is_dir():
        raise SystemExit(f"{SOD} is absent: this benchmark needs ../shared/data/sod300 beside the repo")
    if args.only != "metrics":
        whole_command(args)
    if args.only != "command":
        in_memory(args)


def whole_command(args) -> None:
    """The ``command`` comparison (module docstring)."""
    ours = [sys.executable, "-m", "segtricks.evaluate", "--maps", str(SOD / "maps" / args.maps), "--dataset",
            "folder", "--root", str(SOD)]
    theirs = [sys.executable, "-c", PYSOD_LOOP, str(SOD), args.maps]
    root = Path(__file__).resolve().parents[1]

    def timed(cmd, threads):
        env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS")}}
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    load_before = os.getloadavg()
    rows = []
    for threads in args.threads:
        timed(ours, threads), timed(theirs, threads)  # warm-up: files and modules in the page cache
        pairs_s = [(timed(ours, threads), timed(theirs, threads)) for _ in range(args.repeats)]
        rows.append((threads, statistics.median(o for o, _ in pairs_s), statistics.median(t for _, t in pairs_s),
                     statistics.median(t / o for o, t in pairs_s)))
    load_after = os.getloadavg()
    print(f"\nSOD300, {args.maps} maps, whole commands as subprocesses (imports included), {args.repeats} "
          f"interleaved pairs per thread count; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.1f}' for x in load_before)} before, {'/'.join(f'{x:.1f}' for x in load_after)} after, "
          f"on {os.cpu_count()} CPUs\n")
    print("| threads | segtricks.evaluate --maps s (median) | pysodmetrics loop s (median) "
          "| speed-up (median of pairs) |")
    print("|---|---|---|---|")
    for threads, t_ours, t_theirs, ratio in rows:
        print(f"| {threads} | {t_ours:.2f} | {t_theirs:.2f} | {ratio:.2f}× |")


def in_memory(args) -> None:
    """The ``metrics`` comparison (module docstring)."""
    import py_sod_metrics as psm

    pairs = []
    for mask in sorted((SOD / "masks").glob("*.png")):
        gt = np.asarray(Image.open(mask).convert("L")) > 128
        pred = np.asarray(Image.open(SOD / "maps" / args.maps / mask.name).convert("L")) / 255.0
        pairs.append((mask.stem, pred, gt))
    device = torch.device(args.device)
    tensors = [(i, torch.from_numpy(p).to(device), torch.from_numpy(g).to(device)) for i, p, g in pairs]

    def ours():
        ev = SaliencyEvaluator()
        for i, p, g in tensors:
            ev.update(p, g, i)
        r = ev.results()
        return r["max_fbeta"], r["mean_fbeta_adaptive"], r["mae"], r["s_measure"], r["max_e_measure"]

    def theirs():
        fm = psm.FmeasureV2(metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
        mae, sm, em = psm.MAE(), psm.Smeasure(), psm.Emeasure()
        for _, p, g in pairs:
            for m in (fm, mae, sm, em):
                m.step(p, g, normalize=False)
        f = fm.get_results()["fm"]
        return (f["dynamic"].max(), f["adaptive"], mae.get_results()["mae"], sm.get_results()["sm"],
                em.get_results()["em"]["curve"].max())

    def timed(fn):
        t0 = time.perf_counter()
        values = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, values

    load_before = os.getloadavg()
    rows, values = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        ours(), theirs()  # warm-up
        pairs_s = []
        for _ in range(args.repeats):
            (t_ours, values["segtricks"]), (t_theirs, values["pysodmetrics"]) = timed(ours), timed(theirs)
            pairs_s.append((t_ours, t_theirs))
        rows.append((threads, statistics.median(o for o, _ in pairs_s), statistics.median(t for _, t in pairs_s),
                     statistics.median(t / o for o, t in pairs_s)))
    load_after = os.getloadavg()
    print(f"\nSOD300, {args.maps} maps, {len(pairs)} images, segtricks on {device.type}, {args.repeats} interleaved "
          f"pairs per thread count; load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
          f"{'/'.join(f'{x:.1f}' for x in load_after)} after, on {os.cpu_count()} CPUs\n")
    print("| torch threads | segtricks s (median) | pysodmetrics 1.6 s (median) | speed-up (median of pairs) |")
    print("|---|---|---|---|")
    for threads, t_ours, t_theirs, ratio in rows:
        print(f"| {threads} | {t_ours:.3f} | {t_theirs:.3f} | {ratio:.1f}× |")
    print("\n| implementation | maxF (mean curve) | adaptive F | MAE | S | max E |")
    print("|---|---|---|---|---|---|")
    for name, v in values.items():
        print(f"| {name} | " + " | ".join(f"{x:.6f}" for x in v) + " |")


if __name__ == "__main__":
    main()
