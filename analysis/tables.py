"""Paper tables from cell runs: ours (mean ± std over seeds), the published value, the difference, and
beside each trick cell its contrast with its baseline; the contrasts table of a grid."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from analysis.contrasts import ALPHA, method_note, with_seed_columns
from analysis.paper import DATASET_LABELS, TableLayout, table_layout
from segtricks.config.vocabulary import METRICS
from segtricks.evaluation.protocols import OURS, REFERENCE

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
    metrics = [c for c in runs.columns if c.count(".") == 1 and c.split(".")[1] in METRICS  # <dataset>.<metric>
               and not c.startswith(("train.", "val."))]
    datasets = tuple(sorted({c.split(".")[0] for c in metrics}))
    return TableLayout(f"Grid {grid}", tuple(sorted(runs.cell.unique())), datasets, ("iou",))


PUBLISHED_MARK = "(published)"  # a row of the literature's figures, not run here

CONTRAST_COLUMNS = ["baseline", "contrast_delta", "contrast_ci_low", "contrast_ci_high", "contrast_p_holm"]


def build_table(grid: str, runs: pd.DataFrame,
                contrasts: Optional[pd.DataFrame] = None) -> Tuple[pd.DataFrame, List[str], str]:
    """Long-form table (cell, dataset, metric, mean, std, n, reference, paper, diff, status, and each
    trick cell's contrast with its baseline: baseline, contrast_delta, contrast_ci_low/high,
    contrast_p_holm), footnotes, caption; ``reference`` is the mean under the reference's protocol (NaN
    where not scored). ``contrasts``: ``analysis.contrasts.contrast_rows``'s table (a cell that is the
    trick of several contrasts shows the first)."""
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
                                      for col in (f"{OURS.dataset_key(d)}.{m}", f"{REFERENCE.dataset_key(d)}.{m}"))
                paper = layout.published.get((cell, d, m))
                mean = float(values.mean()) if values.size else np.nan
                rows.append({"cell": cell, "dataset": d, "metric": m, "mean": mean,
                             "std": float(values.std(ddof=1)) if values.size > 1 else np.nan,
                             "n": int(values.size),
                             "reference": float(ref_values.mean()) if ref_values.size else np.nan,
                             "paper": paper if paper is not None else np.nan,
                             "diff": mean - paper if paper is not None and values.size else np.nan,
                             "status": status})
    for name in layout.literature_rows:  # the paper's figures for systems this grid does not run
        for d in layout.datasets:
            for m in layout.metrics:
                paper = layout.literature.get((name, d, m))
                rows.append({"cell": f"{name} {PUBLISHED_MARK}", "dataset": d, "metric": m, "mean": np.nan,
                             "std": np.nan, "n": 0, "reference": np.nan,
                             "paper": paper if paper is not None else np.nan, "diff": np.nan, "status": "published"})
    table = pd.DataFrame(rows)
    shown = pd.DataFrame(columns=["cell", "dataset", "metric", *CONTRAST_COLUMNS])
    if contrasts is not None and len(contrasts):
        shown = (contrasts.drop_duplicates(["trick", "dataset", "metric"])
                 .rename(columns={"trick": "cell", "delta": "contrast_delta", "ci_low": "contrast_ci_low",
                                  "ci_high": "contrast_ci_high", "p_holm": "contrast_p_holm"})
                 [["cell", "dataset", "metric", *CONTRAST_COLUMNS]])
    if len(table):
        table = table.merge(shown, on=["cell", "dataset", "metric"], how="left")
    cap = caption(grid, layout, runs, table["reference"].notna().any() if len(table) else False)
    if contrasts is not None and len(contrasts):
        cap += (" In parentheses beside a trick cell's value: its Δ against its baseline cell (the cell without "
                "the trick) and its 95% interval. " + method_note(contrasts))
    return table, notes, cap


def weight_parts(runs: pd.DataFrame) -> List[str]:
    """Caption sentences: the weights of the FINISHED runs, and a warning when any is random-init."""
    weights = {}
    if len(runs):
        for _, r in runs[runs.status == "FINISHED"].iterrows():
            weights.setdefault(r.backbone or "maps", set()).add(r.weights)
    parts = []
    if weights:
        parts.append("Weights: " + "; ".join(f"{b}: {', '.join(sorted(w))}" for b, w in sorted(weights.items())) + ".")
    if any("random-init" in w for ws in weights.values() for w in ws):
        parts.append("**Built from random-init backbones: these are NOT paper results.**")
    return parts


def caption(grid: str, layout: TableLayout, runs: pd.DataFrame, with_reference: bool = False) -> str:
    parts = [f"**{layout.title}.**", *weight_parts(runs)]
    parts.append("Datasets: " + ", ".join(DATASET_LABELS.get(d, d) for d in layout.datasets) + ".")
    parts.append("Protocols: " + "; ".join(f"`{m}` ({METRICS[m].note})" if m in METRICS else f"`{m}`"
                                           for m in layout.metrics) + ".")
    parts.append(OUR_PROTOCOL + ("; " + REFERENCE_PROTOCOL if with_reference else "") + ".")
    published = bool(layout.published or layout.literature)
    parts.append("Ours: mean ± std over seeds (n runs) where several"
                 + ("; paper: published value; Δ = ours − paper." if published else "; no published values."))
    if layout.literature:
        parts.append(f"Rows marked {PUBLISHED_MARK} are figures the paper copies from the literature, for systems "
                     f"this grid does not run: they have no value of ours.")
    return " ".join(parts)


def _fmt(metric: str, value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    percent = metric in METRICS and METRICS[metric].percent
    return format(value, ("+" if signed else "") + (".1f" if percent else ".3f"))


def short_delta(metric: str, value: float) -> str:
    """A signed difference as precise as the values beside it, a fraction without its leading zero
    (``+.012``; a percentage keeps it: ``+0.5``)."""
    text = _fmt(metric, value, signed=True)
    return text if METRICS[metric].percent else re.sub(r"^([+-])0\.", r"\1.", text)


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
        if pd.notna(r.get("contrast_delta", np.nan)) and ours != MISSING:
            ours += (f" ({short_delta(r.metric, r.contrast_delta)} [{short_delta(r.metric, r.contrast_ci_low)}, "
                     f"{short_delta(r.metric, r.contrast_ci_high)}]{'*' if r.contrast_p_holm < ALPHA else ''})")
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


def markdown(frame: pd.DataFrame, cap: str, footer: str = "") -> str:
    lines = [cap, "", "| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    if footer:
        lines += ["", footer]
    return "\n".join(lines) + "\n"


def esc(s: str) -> str:
    """Text as LaTeX typesets it (the symbols our captions and cells use)."""
    return (str(s).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
            .replace("&", r"\&").replace("#", r"\#").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
            .replace("β", r"$\beta$").replace("—", "---").replace("−", "$-$").replace("<", "$<$")
            .replace("**", ""))


def latex(frame: pd.DataFrame, cap: str, footer: str = "") -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(frame.columns) - 1) + "}",
             r"\toprule", " & ".join(esc(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\caption{" + esc(cap) + (f" {esc(footer)}" if footer else "") + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(table: pd.DataFrame, notes: List[str], cap: str) -> str:
    return markdown(wide(table).reset_index(), cap, "Missing cells (—): " + "; ".join(notes) + "." if notes else "")


def to_latex(table: pd.DataFrame, notes: List[str], cap: str) -> str:
    return latex(wide(table).reset_index(), cap, "Missing cells (—): " + "; ".join(notes) + "." if notes else "")


def contrasts_caption(layout: TableLayout, runs: pd.DataFrame, contrasts: pd.DataFrame) -> str:
    return " ".join([f"**{layout.title}: contrasts.**", *weight_parts(runs), method_note(contrasts)])


def _p(value: float) -> str:
    return format(value, ".2g") if value < 0.01 else format(value, ".3f")


def contrasts_frame(contrasts: pd.DataFrame) -> pd.DataFrame:
    """The contrasts table as shown: contrast, dataset, metric, Δ, CI low/high, p, p_holm (* when
    significant), n images, n seeds, and the seed columns when some contrast has at least 2 seeds."""
    seeds = with_seed_columns(contrasts)
    rows = []
    for _, r in contrasts.iterrows():
        digits = ".2f" if METRICS[r.metric].percent else ".4f"
        row = {"contrast": r.contrast, "dataset": DATASET_LABELS.get(r.dataset, r.dataset),
               "metric": METRICS[r.metric].label, "Δ": format(r.delta, "+" + digits),
               "CI low": format(r.ci_low, "+" + digits), "CI high": format(r.ci_high, "+" + digits),
               "p": _p(r.p), "p_holm": _p(r.p_holm) + ("*" if r.p_holm < ALPHA else ""),
               "n images": int(r.n_images), "n seeds": int(r.n_seeds)}
        if seeds:
            row |= {"seeds": r.seeds, "Δ per seed": ", ".join(format(float(d), "+" + digits) for d in r.seed_deltas.split()),
                    "seed mean": format(r.seed_mean, "+" + digits),
                    "seed CI low": MISSING if np.isnan(r.seed_ci_low) else format(r.seed_ci_low, "+" + digits),
                    "seed CI high": MISSING if np.isnan(r.seed_ci_high) else format(r.seed_ci_high, "+" + digits)}
        rows.append(row)
    return pd.DataFrame(rows)


def contrasts_csv(contrasts: pd.DataFrame) -> pd.DataFrame:
    """The contrasts table at full precision; the seed columns only when some contrast has 2 seeds."""
    seed_columns = ["seeds", "seed_deltas", "seed_mean", "seed_ci_low", "seed_ci_high"]
    return contrasts if with_seed_columns(contrasts) else contrasts.drop(columns=seed_columns)


def contrasts_markdown(contrasts: pd.DataFrame, notes: List[str], cap: str) -> str:
    return markdown(contrasts_frame(contrasts), cap, "Left out: " + "; ".join(notes) + "." if notes else "")


def contrasts_latex(contrasts: pd.DataFrame, notes: List[str], cap: str) -> str:
    return latex(contrasts_frame(contrasts), cap, "Left out: " + "; ".join(notes) + "." if notes else "")
