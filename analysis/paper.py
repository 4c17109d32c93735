"""How the paper tables are labelled; their layout and published numbers are the grid files'.

A grid that regenerates a paper table declares it beside its axes (``table:``, read and checked
against the grid's cells by ``segtricks.config.grid.read_table``), so that adding a grid means editing
one file (``experiments/<grid>.yaml``). Labels for datasets and metrics are presentation, and live here.
"""
from __future__ import annotations

from typing import List, Optional

from segtricks.config.schema import ConfigError
from segtricks.config.grid import TableSpec, grid_path, list_grids, read_table
from segtricks.config.vocabulary import METRICS

DATASET_LABELS = {"dut_omron": "DUT-OMRON", "duts_te": "DUTS-TE", "ecssd": "ECSSD", "voc07": "VOC07",
                  "voc12": "VOC12", "coco20k": "COCO20K", "synthetic": "Synthetic (test)"}
METRIC_LABELS = {name: metric.label for name, metric in METRICS.items()}

TableLayout = TableSpec  # the name analysis.tables builds layouts under


def table_layout(grid: str) -> Optional[TableLayout]:
    """The table a grid file declares, or None (no such grid file, or no ``table:`` section).
    A malformed section is an error naming the file and line."""
    try:
        grid_path(grid)
    except ConfigError:
        return None
    return read_table(grid)


def table_grids() -> List[str]:
    """The grids whose files declare a table."""
    return [g for g in list_grids() if table_layout(g) is not None]
