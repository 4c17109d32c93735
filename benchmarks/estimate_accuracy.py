"""How close ``ablate --dry-run --estimate`` comes: estimate a grid, run it, compare, in one run.

    python benchmarks/estimate_accuracy.py                 # the rehearsal grid (needs ../shared/data)
    python benchmarks/estimate_accuracy.py --grid demo --set optim.epochs=1

Both commands run in a fresh folder (their own store and output root), as a user would run them, with
random-init weights written in the official checkpoint layouts under a temporary $SEGTRICKS_WEIGHTS
(so the real loading path runs). Wall time is the grid command's own, from start to exit; peak memory
is the child's resident-set peak (``getrusage``; on CUDA the estimate's figure is the GPU allocator's,
printed beside the host's). The table gives estimate / measured for each.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def run(cmd, env, cwd) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="rehearsal")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from segtricks.backbones import write_random_release
    flags = [f for s in args.set for f in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        for name in ("dino_vits8", "dino_vits16", "ibot_vits16"):
            write_random_release(name, weights)
        env = {**os.environ, "SEGTRICKS_WEIGHTS": str(weights)}

        def fresh(folder: str) -> list:  # each command in its own store and output root
            return ["--grid", args.grid, *flags, "--tracking-uri", f"sqlite:///{tmp}/{folder}/mlflow.db",
                    "--output-root", f"{tmp}/{folder}/outputs"]

        # the grid first: the children's resident-set peak is then the grid's alone
        wall, _ = run([sys.executable, "-m", "segtricks.ablate", *fresh("run")], env, REPO)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        _, out = run([sys.executable, "-m", "segtricks.ablate", *fresh("estimate"), "--dry-run", "--estimate"],
                     env, REPO)
        total = next(line for line in out.splitlines() if line.strip().startswith("total "))
        est_s = seconds(re.search(r"(\d+(?:\.\d+)? (?:s|min|h))", total).group(1))
        value, unit = re.search(r"(\d+(?:\.\d+)?) (B|kB|MB|GB)", total).groups()
        est_bytes = float(value) * UNITS[unit]
    print(out)
    print(f"grid {args.grid} {' '.join(args.set)}")
    print("| what | estimate | measured | estimate / measured |")
    print("|---|---|---|---|")
    print(f"| wall time | {est_s:.0f} s | {wall:.0f} s | {est_s / wall:.2f} |")
    print(f"| peak memory | {est_bytes / 1e9:.2f} GB | {peak / 1e9:.2f} GB | {est_bytes / peak:.2f} |")


if __name__ == "__main__":
    main()
