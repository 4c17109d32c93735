"""A cell run's description (``mlflow.note.content``): what the run page shows under Description, so that
it answers "what is this run?" without the params: the cell, backbone and weights, tricks, the headline
metrics per dataset (``vocabulary.SUMMARY_METRICS``) and where its model comes from.
"""
from __future__ import annotations

from typing import Dict, Optional

from segtricks.evaluation.protocols import get_protocol
from segtricks.config.schema import DEFAULT_METHOD
from segtricks.config.grid import Cell
from segtricks.config.vocabulary import METRICS, SUMMARY_METRICS


def metric_text(name: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if METRICS[name].percent else f"{value:.3f}"


def cell_description(cell: Cell, weights: str, results: Dict[str, float], trains: bool,
                     model_from: Optional[str], exp_id: str) -> str:
    """Markdown for a cell's run: ``results`` are its ``<dataset key>.<metric>`` metrics; ``trains``:
    this run trained the model; ``model_from``: else the run that did (the model it shares)."""
    cfg = cell.cfg
    if not cell.trains and cfg.maps is not None:
        model = f"precomputed maps in `{cfg.maps}`"
    elif not cell.trains:
        model = f"{cfg.method}, which trains nothing, on the frozen backbone"
    elif trains:
        model = f"trained by this run (`{cell.training.dir}`)"
    elif model_from:
        model = f"shared with run [{model_from}](#/experiments/{exp_id}/runs/{model_from}), which trained it"
    else:
        model = f"an earlier training, `{cell.training.dir}`"
    lines = [f"**{cell.id}**", "",
             f"- backbone: `{cfg.backbone.name}`, weights `{weights}`",
             *([f"- method: `{cfg.method}`"] if cfg.method != DEFAULT_METHOD else []),
             f"- tricks: {', '.join(cfg.tricks) or 'none'}",
             f"- model: {model}", "", "Results:", ""]
    # one line per dataset: the run page draws a markdown table without borders or padding, unreadable
    for ref in cfg.eval:
        for name in cfg.eval_protocols:
            key = get_protocol(name).dataset_key(ref.name)
            lines.append(f"- **{key}**: " + ", ".join(f"{METRICS[m].label} {metric_text(m, results.get(f'{key}.{m}'))}"
                                                      for m in SUMMARY_METRICS))
    return "\n".join(lines) + "\n"
