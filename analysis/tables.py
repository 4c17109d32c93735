"""Paper tables from cell runs: ours (mean ± std over seeds), the published value, the difference."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from analysis.paper import DATASET_LABELS, TableLayout, table_layout
from segtricks.spec.vocabulary import METRICS

MISSING = "—"
OUR_PROTOCOL = ("Evaluation protocol: ours (BatchNorm in eval mode, foreground chosen per image, metrics "
                "against the original-size ground truth)")
REFERENCE_PROTOCOL = ("'ref. protocol': the same runs scored under the reference implementation's protocol "
                      "(BatchNorm in train mode, inversion per batch of 8, metrics on a centre crop of the resized "
                      "ground truth), the one the paper's numbers were produced with")


def layout_for(grid: str, runs: pd.DataFrame) -> TableLayout:
    """The layout the grid file declares; otherwise rows = cells, columns = logged datasets."""
    layout = table_layout(grid)
    if layout is not None:
        return layout
    metrics = [c for c in runs.columns if "." in c and not c.startswith(("train.", "val."))
               and ".reference." not in c]
    datasets = tuple(sorted({c.split(".")[0] for c in metrics}))
    return TableLayout(f"Grid {grid}", tuple(sorted(runs.cell.unique())), datasets, ("iou",))


def build_table(grid: str, runs: pd.DataFrame) -> Tuple[pd.DataFrame, List[str], str]:
    """Long-form table (cell, dataset, metric, mean, std, n, reference, paper, diff, status), footnotes,
    caption; ``reference`` is the mean under the reference's protocol (NaN where not scored)."""
    layout = layout_for(grid, runs)
    cells = list(layout.rows) + sorted(set(runs.cell) - set(layout.rows)) if len(runs) else list(layout.rows)
    rows, notes = [], []
    for cell in cells:
        mine = runs[runs.cell == cell] if len(runs) else runs
        done = mine[mine.status == "FINISHED"] if len(mine) else mine
        status = "ok"
        if done.empty:
            states = set(mine.status) if len(mine) else set()
            status = ("running" if "RUNNING" in states else "failed" if "FAILED" in states
                      else "stale (worker died; rerun the grid to resume)" if "stale" in states else "not run")
            notes.append(f"{cell}: {status}")
        for d in layout.datasets:
            for m in layout.metrics:
                values, ref_values = (done[col].dropna().to_numpy() if (len(done) and col in done) else np.array([])
                                      for col in (f"{d}.{m}", f"{d}.reference.{m}"))
                paper = layout.published.get((cell, d, m))
                mean = float(values.mean()) if values.size else np.nan
                rows.append({"cell": cell, "dataset": d, "metric": m, "mean": mean,
                             "std": float(values.std(ddof=1)) if values.size > 1 else np.nan,
                             "n": int(values.size),
                             "reference": float(ref_values.mean()) if ref_values.size else np.nan,
                             "paper": paper if paper is not None else np.nan,
                             "diff": mean - paper if paper is not None and values.size else np.nan,
                             "status": status})
    table = pd.DataFrame(rows)
    return table, notes, caption(grid, layout, runs, table["reference"].notna().any() if len(table) else False)


def caption(grid: str, layout: TableLayout, runs: pd.DataFrame, with_reference: bool = False) -> str:
    weights = {}
    if len(runs):
        for _, r in runs[runs.status == "FINISHED"].iterrows():
            weights.setdefault(r.backbone or "maps", set()).add(r.weights)
    parts = [f"**{layout.title}.**"]
    if weights:
        parts.append("Weights: " + "; ".join(f"{b}: {', '.join(sorted(w))}" for b, w in sorted(weights.items())) + ".")
    if any("random-init" in w for ws in weights.values() for w in ws):
        parts.append("**Built from random-init backbones: these are NOT paper results.**")
    parts.append("Datasets: " + ", ".join(DATASET_LABELS.get(d, d) for d in layout.datasets) + ".")
    parts.append("Protocols: " + "; ".join(f"`{m}` ({METRICS[m].note})" if m in METRICS else f"`{m}`"
                                           for m in layout.metrics) + ".")
    parts.append(OUR_PROTOCOL + ("; " + REFERENCE_PROTOCOL if with_reference else "") + ".")
    published = bool(layout.published)
    parts.append("Ours: mean ± std over seeds (n runs) where several"
                 + ("; paper: published value; Δ = ours − paper." if published else "; no published values."))
    return " ".join(parts)


def _fmt(metric: str, value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    percent = metric in METRICS and METRICS[metric].percent
    return format(value, ("+" if signed else "") + (".1f" if percent else ".3f"))


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell; for each dataset × metric the columns ours, [ref. protocol,] paper, Δ (ours
    alone when the paper publishes nothing for this grid and no run was scored under the reference's
    protocol)."""
    with_paper = table["paper"].notna().any()
    with_reference = "reference" in table and table["reference"].notna().any()
    out: Dict[str, Dict[str, str]] = {}
    for _, r in table.iterrows():
        ours = _fmt(r.metric, r["mean"])
        if r.n > 1:
            ours += f" ± {_fmt(r.metric, r['std'])} (n={r.n})"
        label = METRICS[r.metric].label if r.metric in METRICS else r.metric
        head = f"{DATASET_LABELS.get(r.dataset, r.dataset)} {label}"
        row = out.setdefault(r.cell, {})
        if not (with_paper or with_reference):
            row[head] = ours
            continue
        row[f"{head} ours"] = ours
        if with_reference:
            row[f"{head} ref. protocol"] = _fmt(r.metric, r.reference)
        if not with_paper:
            continue
        row[f"{head} paper"] = _fmt(r.metric, r.paper)
        row[f"{head} Δ"] = _fmt(r.metric, r["diff"], signed=True)
    df = pd.DataFrame.from_dict(out, orient="index")
    df.index.name = "cell"
    return df


def to_markdown(table: pd.DataFrame, notes: List[str], cap: str) -> str:
    w = wide(table).reset_index()
    lines = [cap, "", "| " + " | ".join(w.columns) + " |", "|" + "---|" * len(w.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in w.itertuples(index=False)]
    if notes:
        lines += ["", "Missing cells (—): " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, notes: List[str], cap: str) -> str:
    w = wide(table).reset_index()

    def esc(s: str) -> str:
        return (str(s).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
                .replace("&", r"\&").replace("#", r"\#").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
                .replace("β", r"$\beta$").replace("—", "---").replace("**", ""))

    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(w.columns) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in w.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in w.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = f" Missing cells (---): {esc('; '.join(notes))}." if notes else ""
    lines += [r"\caption{" + esc(cap) + note + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
