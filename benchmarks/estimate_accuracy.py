"""How close ``ablate --dry-run --estimate`` comes: estimate a grid, run it, compare, in one run.

    python benchmarks/estimate_accuracy.py                 # the rehearsal grid (needs ../shared/data)
    python benchmarks/estimate_accuracy.py --grid demo --set optim.epochs=1

Both commands run in fresh folders (their own store and output root), as a user would run them, with
random-init weights written in the official checkpoint layouts under a temporary $SEGTRICKS_WEIGHTS
(so the real loading path runs). Wall time is the grid command's own, from start to exit; peak memory
is its resident-set peak (``getrusage`` of the child; on CUDA the estimate's peak is the GPU
allocator's instead). The table gives estimate / measured for each.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def run_command(cmd: List[str], env: Dict[str, str]) -> Tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, done.stdout


def estimated_total(out: str) -> Tuple[float, float]:
    """(seconds, peak bytes) from the ``total`` row that ``--estimate`` prints."""
    total = next(line for line in out.splitlines() if line.strip().startswith("total "))
    value, unit = re.search(r"(\d+(?:\.\d+)?) (s|min|h)\b", total).groups()
    seconds = float(value) * {"s": 1, "min": 60, "h": 3600}[unit]
    value, unit = re.search(r"(\d+(?:\.\d+)?) (B|kB|MB|GB)\b", total).groups()
    return seconds, float(value) * UNITS[unit]


@dataclass
class Comparison:
    estimate_s: float
    measured_s: float
    estimate_bytes: float
    measured_bytes: float
    estimate_output: str


def estimate_then_run(grid: str, flags: Sequence[str] = (), keep: Optional[Path] = None) -> Comparison:
    """Run ``grid`` (the children's resident-set peak is then the grid's alone), then estimate it
    afresh; ``keep``: a folder for both (kept), instead of a temporary one."""
    sys.path.insert(0, str(REPO))
    from segtricks.models.backbones import write_random_release
    with tempfile.TemporaryDirectory() if keep is None else contextlib.nullcontext(str(keep)) as tmp:
        for name in ("dino_vits8", "dino_vits16", "ibot_vits16", "dinov2_vits14", "dinov2_vits14_reg",
                     "dinov3_vits16"):  # every backbone a rehearsal names, in its official layout
            write_random_release(name, Path(tmp) / "weights")
        env = {**os.environ, "SEGTRICKS_WEIGHTS": f"{tmp}/weights"}

        def fresh(folder: str) -> List[str]:  # each command in its own store and output root
            Path(tmp, folder).mkdir(parents=True, exist_ok=True)
            return [sys.executable, "-m", "segtricks.ablate", "--grid", grid, *flags,
                    "--tracking-uri", f"sqlite:///{tmp}/{folder}/mlflow.db", "--output-root", f"{tmp}/{folder}/outputs"]

        wall, _ = run_command(fresh("run"), env)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        _, out = run_command(fresh("estimate") + ["--dry-run", "--estimate"], env)
    est_s, est_bytes = estimated_total(out)
    return Comparison(est_s, wall, est_bytes, peak, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(Path(__file__).parent / "rehearsal.yaml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (its store: <keep>/run/mlflow.db)")
    args = ap.parse_args()
    c = estimate_then_run(args.grid, [f for s in args.set for f in ("--set", s)], args.keep)
    print(c.estimate_output)
    print(f"grid {args.grid} {' '.join(args.set)}")
    print("| what | estimate | measured | estimate / measured |")
    print("|---|---|---|---|")
    print(f"| wall time | {c.estimate_s:.0f} s | {c.measured_s:.0f} s | {c.estimate_s / c.measured_s:.2f} |")
    print(f"| peak memory | {c.estimate_bytes / 1e9:.2f} GB | {c.measured_bytes / 1e9:.2f} GB | "
          f"{c.estimate_bytes / c.measured_bytes:.2f} |")


if __name__ == "__main__":
    main()
