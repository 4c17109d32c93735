"""The layout of each paper table and its published numbers, read from the grid files.

A grid that regenerates a paper table declares it beside its axes, so that adding a grid means
editing one file (``experiments/<grid>.yaml``)::

    table:
      title: "Table 3: IoU per backbone and trick combination"
      datasets: [dut_omron, duts_te, ecssd]
      metrics: [iou]
      rows: [...]          # optional: the grid's cells, in grid order
      published:           # optional: per row, datasets in order, each with its metrics in order
        dino_s8/baseline: [.664, .761, .853]

Labels for datasets and metrics are presentation, and live here.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from segtricks.spec.config import ConfigError, read_yaml_mapping
from segtricks.spec.grid import grid_path, list_grids

DATASET_LABELS = {"dut_omron": "DUT-OMRON", "duts_te": "DUTS-TE", "ecssd": "ECSSD", "voc07": "VOC07",
                  "voc12": "VOC12", "coco20k": "COCO20K", "synthetic": "Synthetic (test)"}
METRIC_LABELS = {"acc": "Acc", "iou": "IoU", "max_fbeta": "maxFβ", "corloc": "CorLoc (%)"}


@dataclass(frozen=True)
class TableLayout:
    title: str
    rows: Tuple[str, ...]  # cell names, in the paper's order
    datasets: Tuple[str, ...]
    metrics: Tuple[str, ...]
    published: Dict[Tuple[str, str, str], float] = field(default_factory=dict)  # (row, dataset, metric)


def table_layout(grid: str) -> Optional[TableLayout]:
    """The table a grid file declares, or None (no such grid file, or no ``table:`` section).
    A malformed section is an error naming the file."""
    try:
        path = grid_path(grid)
    except ConfigError:
        return None
    data = read_yaml_mapping(path, "grid file")
    table = data.get("table")
    if not table:
        return None
    try:
        datasets, metrics = tuple(table["datasets"]), tuple(table["metrics"])
        axes = data.get("axes") or {}
        cells = ["/".join(str(e["name"]) for e in combo) for combo in itertools.product(*axes.values())]
        rows = tuple(table.get("rows") or cells)
        published: Dict[Tuple[str, str, str], float] = {}
        for row, values in (table.get("published") or {}).items():
            keys = [(row, d, m) for d in datasets for m in metrics]
            if len(values) != len(keys):
                raise ConfigError(f"{path}: table.published.{row} has {len(values)} values; expected "
                                  f"{len(keys)} (datasets × metrics, dataset-major)")
            published |= dict(zip(keys, map(float, values)))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: table: needs title, datasets and metrics lists ({exc})") from None
    return TableLayout(str(table.get("title", f"Grid {grid}")), rows, datasets, metrics, published)


def table_grids() -> List[str]:
    """The grids whose files declare a table."""
    return [g for g in list_grids() if table_layout(g) is not None]
