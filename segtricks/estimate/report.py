"""The printed estimate: a row per cell (action, training, evaluation, total, peak memory, disk by kind),
the total, whether the loader keeps up, and the assumptions."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # formatting needs no measuring code: the preflight's disk line imports human_bytes
    from segtricks.estimate.cost import GridEstimate


def human_s(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def human_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def format_estimate(est: GridEstimate, free_bytes: Optional[float] = None) -> str:
    width = max([len(c.name) for c in est.cells] + [4])
    lines = [f"estimate on {est.device} (measured here; see the assumptions below)",
             f"  {'cell':<{width}}  {'action':<14} {'train':>8} {'evaluate':>9} {'total':>8} {'peak mem':>9} "
             f"{'disk':>9}  disk by kind"]
    for c in est.cells:
        kinds = ", ".join(f"{k} {human_bytes(v)}" for k, v in c.disk_bytes.items() if v)
        lines.append(f"  {c.name:<{width}}  {c.action:<14} {human_s(c.train_s):>8} {human_s(c.eval_s):>9} "
                     f"{human_s(c.total_s):>8} {human_bytes(c.peak_bytes) if c.peak_bytes else '—':>9} "
                     f"{human_bytes(sum(c.disk_bytes.values())):>9}  {kinds}")
    lines.append(f"  {'total':<{width}}  {'':<14} {'':>8} {'':>9} {human_s(est.total_s):>8} "
                 f"{human_bytes(est.peak_bytes):>9} {human_bytes(est.disk_bytes):>9}  "
                 f"(start-up {human_s(est.startup_s)} included; cells run one after another)")
    lines += [f"  loader: {f}" for f in est.feed] or ["  loader: keeps up with every training step measured"]
    if free_bytes is not None and est.disk_bytes > free_bytes:
        lines.append(f"  warning: the grid needs about {human_bytes(est.disk_bytes)} of disk and "
                     f"{human_bytes(free_bytes)} is free")
    lines += ["  assumptions:"] + [f"    - {a}" for a in est.assumptions]
    return "\n".join(lines)
