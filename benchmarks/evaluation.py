"""Full SOD300 evaluation time: segtricks' streaming evaluator vs pysodmetrics, same maps, same run.

    python benchmarks/evaluation.py [--maps DSS] [--repeats 3] [--device cpu|cuda]

Both get the same in-memory maps (file reading is excluded) and compute the same protocols:
max F of the mean F curve, adaptive F, MAE, S-measure (α 0.5), and the E-measure curve. The table
prints each one's numbers beside the time, so "faster at equal numbers" can be read off.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segtricks.metrics import SaliencyEvaluator

SOD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sod300"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", default="DSS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if not SOD.is_dir():
        raise SystemExit(f"{SOD} is absent: this benchmark needs ../shared/data/sod300 beside the repo")
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

    rows = []
    for name, fn in (("pysodmetrics 1.6 (numpy, CPU)", theirs), (f"segtricks ({device.type})", ours)):
        fn()  # warm-up
        times, values = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            values = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(times), values))
    base = rows[0][1]
    print(f"\nSOD300, {args.maps} maps, {len(pairs)} images, torch threads {torch.get_num_threads()}\n")
    print("| implementation | s (median) | speed-up | maxF (mean curve) | adaptive F | MAE | S | max E |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t, v in rows:
        print(f"| {name} | {t:.3f} | {base / t:.1f}× | " + " | ".join(f"{x:.4f}" for x in v) + " |")


if __name__ == "__main__":
    main()
