"""The paper's published numbers (SPEC §9) and the layout of each table.

A table is rows (grid cells, in the paper's order) × datasets × metrics. ``PUBLISHED`` maps
(grid, cell, dataset, metric) to the paper's value; cells the paper does not report are absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

SALIENCY = ("dut_omron", "duts_te", "ecssd")
DATASET_LABELS = {"dut_omron": "DUT-OMRON", "duts_te": "DUTS-TE", "ecssd": "ECSSD", "voc07": "VOC07",
                  "voc12": "VOC12", "coco20k": "COCO20K", "synthetic": "Synthetic (test)"}
METRIC_LABELS = {"acc": "Acc", "iou": "IoU", "max_fbeta": "maxFβ", "corloc": "CorLoc (%)"}


@dataclass(frozen=True)
class TableLayout:
    title: str
    rows: Tuple[str, ...]  # cell names, in the paper's order
    datasets: Tuple[str, ...]
    metrics: Tuple[str, ...]


TRICK_ROWS = ("baseline", "crop", "gf", "crop+gf")
LAYOUTS: Dict[str, TableLayout] = {
    "table1": TableLayout("Table 1: Sempart (our implementation) vs ours (crop + GF), DINO S/8",
                          ("sempart", "ours"), SALIENCY, ("acc", "iou", "max_fbeta")),
    "table2": TableLayout("Table 2 (our reconstruction): GF vs BF post-processing, DINO S/8",
                          ("baseline", "gf", "bf", "crop", "crop+gf", "crop+bf"), SALIENCY,
                          ("acc", "iou", "max_fbeta")),
    "table3": TableLayout("Table 3: IoU per backbone and trick combination",
                          tuple(f"{b}/{t}" for b in ("dino_s8", "dino_s16", "ibot_s16") for t in TRICK_ROWS),
                          SALIENCY, ("iou",)),
    "table4": TableLayout("Table 4: single-object discovery (CorLoc %), DINO S/8",
                          TRICK_ROWS, ("voc07", "voc12", "coco20k"), ("corloc",)),
    "table5": TableLayout("Table 5: GF and BF applied to other methods' masks",
                          tuple(f"{m}/{p}" for m in ("tokencut", "move") for p in ("none", "gf", "bf")),
                          SALIENCY, ("acc", "iou", "max_fbeta")),
    "demo": TableLayout("Demo: Table-3-shaped ablation on synthetic data (weight-free backbone)",
                        tuple(f"demo_vit4/{t}" for t in TRICK_ROWS), ("synthetic",), ("iou", "max_fbeta", "corloc")),
}


def _rows(grid: str, rows: List[str], datasets, metrics, values: List[List[float]]) -> Dict:
    """values[r] lists the row's numbers dataset-major, metric-minor."""
    out = {}
    for row, numbers in zip(rows, values):
        it = iter(numbers)
        for d in datasets:
            for m in metrics:
                out[(grid, row, d, m)] = next(it)
    return out


PUBLISHED: Dict[Tuple[str, str, str, str], float] = {}
PUBLISHED |= _rows("table3", list(LAYOUTS["table3"].rows), SALIENCY, ("iou",), [
    [.664, .761, .853], [.670, .772, .852], [.684, .784, .869], [.684, .787, .862],
    [.604, .692, .784], [.647, .710, .812], [.608, .697, .788], [.652, .714, .816],
    [.584, .650, .793], [.588, .654, .797], [.600, .664, .806], [.604, .668, .811]])
PUBLISHED |= _rows("table4", list(TRICK_ROWS), ("voc07", "voc12", "coco20k"), ("corloc",), [
    [71.7, 75.9, 61.3], [74.2, 77.0, 64.3], [71.7, 75.7, 61.3], [74.4, 77.0, 63.4]])
PUBLISHED |= _rows("table1", ["sempart", "ours"], SALIENCY, ("acc", "iou", "max_fbeta"), [
    [.908, .664, .758, .949, .761, .856, .950, .853, .925],
    [.920, .684, .765, .956, .787, .869, .952, .862, .931]])
PUBLISHED |= _rows("table5", list(LAYOUTS["table5"].rows), SALIENCY, ("acc", "iou", "max_fbeta"), [
    [.880, .533, .600, .903, .576, .672, .918, .712, .803],
    [.880, .553, .676, .907, .597, .740, .925, .740, .861],
    [.897, .618, .697, .914, .624, .755, .934, .772, .874],
    [.923, .615, .712, .950, .713, .815, .954, .830, .916],
    [.925, .615, .631, .952, .726, .813, .958, .843, .923],
    [.931, .636, .734, .951, .687, .821, .953, .801, .916]])
