"""The names every stage shares, written once: the metrics and how cells are named.

``METRICS`` is the one table of metric specs. The evaluator's ``results()`` keys, a study's objective,
the grid runner's summary, the tables' labels and caption notes, and which evaluations need the
(slower) structure measures are all read from it. Metric names in MLflow follow one scheme:
``<dataset>.<metric>`` under our protocol and ``<dataset>.reference.<metric>`` under the reference's
(``segtricks.evaluation.protocols``). Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple


@dataclass(frozen=True)
class MetricSpec:
    """A metric an evaluation reports.

    ``rescales``: scored on each map rescaled by its own min and max (the SOD toolboxes' protocols),
    not on the map as predicted (the paper's). ``structure``: one of the structure measures, computed
    only when an evaluation asks for them (``SaliencyEvaluator(with_structure=True)``). ``summary``:
    shown in the grid runner's closing summary. ``percent``: reported in % (printed with one decimal;
    the per-image record holds a 0/1 hit, scaled by 100). ``lower_is_better``: a gain is a negative Δ.
    ``record``: the per-image records' column a paired comparison reads (None: the metric is not a
    mean of per-image values, as maxFβ over the image-averaged F curve)."""

    name: str
    label: str  # in table headers
    note: str  # what it is, in a table caption
    rescales: bool = False
    structure: bool = False
    summary: bool = False
    percent: bool = False
    lower_is_better: bool = False
    record: Optional[str] = None

    @property
    def scale(self) -> float:
        """What a per-image record is multiplied by to be in the metric's unit."""
        return 100.0 if self.percent else 1.0


METRICS: Dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("acc", "Acc", "pixel accuracy at 0.5", record="acc"),
    MetricSpec("iou", "IoU", "per-image IoU at 0.5, mean over images", summary=True, record="iou"),
    MetricSpec("max_fbeta", "maxFβ", "β²=0.3; max over 255 thresholds of the image-averaged F curve, TokenCut/MOVE",
               summary=True),
    MetricSpec("max_fbeta_per_image", "maxFβ (per image)", "β²=0.3; each image's max F over thresholds, averaged"),
    MetricSpec("max_fbeta_pr_curve", "maxFβ (PR curve)", "β²=0.3; max F of the image-averaged precision and "
               "recall curves of the rescaled maps (SOD toolboxes)", rescales=True),
    MetricSpec("mean_fbeta_adaptive", "adaptive Fβ", "β²=0.3; F at twice the map's mean, averaged (SOD toolboxes)",
               rescales=True),
    MetricSpec("mae", "MAE", "mean absolute error of the rescaled map (SOD toolboxes)", rescales=True,
               lower_is_better=True, record="mae"),
    MetricSpec("s_measure", "S-measure", "structure measure, α = 0.5 (Fan et al. 2017)", rescales=True,
               structure=True),
    MetricSpec("max_e_measure", "max E-measure", "enhanced-alignment measure, max over thresholds (Fan et al. 2018)",
               rescales=True, structure=True),
    MetricSpec("mean_e_measure", "mean E-measure", "enhanced-alignment measure, mean over thresholds "
               "(Fan et al. 2018)", rescales=True, structure=True),
    MetricSpec("corloc", "CorLoc (%)", "% images whose largest component's box has IoU ≥ 0.5 with a GT box",
               summary=True, percent=True, record="corloc_hit"),
)}

# What the validation hook adds to each epoch's metrics (and checkpoints are selected by): IoU on the
# validation split, under our protocol, without post-processing.
VALIDATION_METRIC = "val.iou"

# The saliency metrics (every metric but CorLoc, which needs ground-truth boxes), in table order.
SALIENCY_METRICS: Tuple[str, ...] = tuple(n for n in METRICS if n != "corloc")
SUMMARY_METRICS: Tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.summary)


def needs_structure(metrics: Sequence[str]) -> bool:
    """Whether scoring ``metrics`` needs the structure measures (``MetricSpec.structure``)."""
    return any(METRICS[m].structure for m in metrics if m in METRICS)


# A cell's name joins its axis entries' names, in axis order: ``dino_s8/crop+gf``.
CELL_SEPARATOR = "/"


def cell_name(entry_names: Sequence[str]) -> str:
    """The name of the cell made of these axis entries (one per axis, in the grid file's order)."""
    return CELL_SEPARATOR.join(str(n) for n in entry_names)
