"""Regenerate the paper's tables and IoU-vs-object-size figures from logged MLflow runs.

    python -m analysis.make_tables                      # every grid found in the store
    python -m analysis.make_tables --grid table3 --format latex
    python -m analysis.make_tables --grid demo --tracking-uri sqlite:///mlflow.db --out-dir results
    python -m analysis.make_tables --grid demo --contrasts   # only the contrasts table and its forest plot

Writes ``<out-dir>/<grid>.{md,tex,csv}``, ``<out-dir>/figures/<grid>_size*.{png,pdf}`` (IoU against
object size, 20 bins) and ``<grid>_qualitative*_<dataset>.{png,pdf}``, prints
the Markdown table, and logs tables and figures to an ``analysis`` run of the grid's experiment.
Nothing is recomputed: numbers come from FINISHED runs found by their tags.

Contrasts (``analysis.contrasts``): each trick cell against its baseline cell, paired on the same
images and seeds, for each dataset and metric of the table that has per-image evidence (IoU, Acc,
MAE, CorLoc, max Fβ): Δ with its 95% BCa bootstrap interval over images, the sign-flip p and Holm's
adjustment across the table. Written as ``<out-dir>/<grid>_contrasts.{md,tex,csv}`` and the forest plot
``<out-dir>/figures/<grid>_contrasts.{png,pdf}``, printed after the main table, and shown beside each
trick cell's value in it.

Qualitative figures: among the first 16 images of a dataset (kept with every run), the two with the
largest IoU gain of the group's last trick combination (e.g. crop+gf) over its baseline, and the two
with the largest loss; columns are the image, the ground truth and each cell's prediction.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pandas as pd
from matplotlib.figure import Figure

from analysis.contrasts import contrast_rows, grid_contrasts
from analysis.figures import last_entry, pick_examples, plot_contrasts, plot_iou_vs_size, plot_qualitative
from analysis.paper import TableLayout, table_grids
from analysis.runs import NoRunsError, NoStoreError, RunEvidence, load_records, load_runs
from analysis.tables import (build_table, contrasts_caption, contrasts_csv, contrasts_latex, contrasts_markdown,
                             layout_for, to_latex, to_markdown)
from segtricks import errors
from segtricks.config.schema import ConfigError
from segtricks.config.grid import grid_name, grid_path, read_grid
from segtricks.config.vocabulary import CELL_SEPARATOR
from segtricks.tracking.artifacts import read_samples
from segtricks.tracking.connect import exit_on_environment_error
from segtricks.tracking.store import RunLog, Store
from segtricks.tracking.tags import ANALYSIS, GRID, UPDATED
from segtricks.tracking.uri import tracking_uri


def analysis_run(store: Store, grid: str, experiment: Optional[str]) -> RunLog:
    """The grid's ``analysis`` run (created once; it carries no cell tags, so cells never see it)."""
    exp_id = store.experiment(experiment or grid, create=False)
    found = store.runs(exp_id, {ANALYSIS: "true"})
    if found:
        return store.run(found[0].info.run_id)
    run = store.start(exp_id, "analysis", {ANALYSIS: "true", GRID: grid})
    run.finish()
    return run


def save(fig: Figure, stem: Path) -> List[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    return paths


def run_samples(runs, cell: str, dataset: str, uri: Optional[str]) -> dict:
    """The kept sample predictions of a cell's first FINISHED run ({} when it has none)."""
    done = runs[(runs.cell == cell) & (runs.status == "FINISHED")]
    return {} if done.empty else read_samples(Store(uri), done.run_id.iloc[0], dataset)


class NoContrastsError(errors.BadInput, LookupError):
    """``--contrasts`` for a grid whose table has no contrast (no grid file, or no trick cell with a baseline)."""


def contrast_table(grid: str, runs: pd.DataFrame, layout: TableLayout,
                   uri: Optional[str]) -> Tuple[Optional[pd.DataFrame], List[str]]:
    """The grid's contrasts table and the notes on what was left out; None when the grid has no grid
    file (its runs alone do not say which cell is whose baseline) or no contrast."""
    try:
        grid_path(grid)
    except ConfigError:
        return None, []
    contrasts = grid_contrasts(read_grid(grid))
    if not contrasts:
        return None, []
    evidence = RunEvidence(runs, Store(uri))
    return contrast_rows(contrasts, evidence.seeds_of, layout.datasets, layout.metrics, evidence)


def write_contrasts(grid: str, out_dir: Path, contrasts: pd.DataFrame, notes: List[str],
                    cap: str) -> Tuple[str, List[Path]]:
    """``<grid>_contrasts.{md,tex,csv}`` and, when it has rows, the forest plot: the Markdown and the paths."""
    md = contrasts_markdown(contrasts, notes, cap) if len(contrasts) else \
        f"{cap}\n\nNo contrast has evidence. Left out: {'; '.join(notes)}.\n"
    written = [out_dir / f"{grid}_contrasts.md", out_dir / f"{grid}_contrasts.tex", out_dir / f"{grid}_contrasts.csv"]
    written[0].write_text(md)
    written[1].write_text(contrasts_latex(contrasts, notes, cap))
    contrasts_csv(contrasts).to_csv(written[2], index=False)
    if len(contrasts):
        written += save(plot_contrasts(contrasts, f"{grid}: each trick cell against its baseline"),
                        out_dir / "figures" / f"{grid}_contrasts")
    return md, written


def make(grid: str, fmt: str, out_dir: Path, uri: Optional[str], experiment: Optional[str],
         log: bool = True, only_contrasts: bool = False) -> str:
    """``grid``: a grid name, or a grid file's path (its layout from the file, its runs and the files
    written under the file's ``name:``)."""
    name = grid_name(grid)  # what its outputs are called
    experiment = experiment or name
    runs = load_runs(grid, uri, experiment)
    layout = layout_for(grid, runs)
    contrasts, contrast_notes = contrast_table(grid, runs, layout, uri)
    if only_contrasts and contrasts is None:
        raise NoContrastsError(f"grid {grid} has no contrasts: no cell with tricks has a baseline cell (the same "
                               f"config with tricks: []); declare them under table: contrasts: in its grid file")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    contrasts_md = ""
    if contrasts is not None:
        contrasts_md, written = write_contrasts(name, out_dir, contrasts, contrast_notes,
                                                contrasts_caption(layout, runs, contrasts))
    if only_contrasts:
        if log:
            log_outputs(uri, name, experiment, written)
        return contrasts_md
    table, notes, cap = build_table(grid, runs, contrasts)
    md = to_markdown(table, notes, cap)
    written.append(out_dir / f"{name}.md")
    written[-1].write_text(md)
    if fmt == "latex":
        written.append(out_dir / f"{name}.tex")
        written[-1].write_text(to_latex(table, notes, cap))
    elif fmt == "csv":
        written.append(out_dir / f"{name}.csv")
        table.to_csv(written[-1], index=False)
    records = {d: load_records(grid, d, runs, uri) for d in layout.datasets if "corloc" not in layout.metrics
               or d == "synthetic"}
    records = {d: r for d, r in records.items() if len(r)}
    if records:
        groups = {}
        for cell in layout.rows:
            groups.setdefault(cell.split(CELL_SEPARATOR)[0] if CELL_SEPARATOR in cell else name, []).append(cell)
        for group, cells in groups.items():
            present = [c for c in cells if any(c in set(r.cell) for r in records.values())]
            if not present:
                continue
            suffix = f"_{group}" if group != name else ""
            fig = plot_iou_vs_size(records, present, f"{name}: mean IoU against object size ({group})")
            written += save(fig, out_dir / "figures" / f"{name}_size{suffix}")
            if len(present) < 2:
                continue
            for dataset, recs in records.items():
                samples = {c: s for c in present if (s := run_samples(runs, c, dataset, uri))}
                if len(samples) < len(present):
                    continue
                ids = sorted(set.intersection(*(set(s) for s in samples.values())))
                chosen = pick_examples(recs, present[0], present[-1], ids)
                if chosen:
                    fig = plot_qualitative(samples, recs, present, chosen,
                                           f"{name} on {dataset}: largest IoU gains and losses of "
                                           f"{last_entry(present[-1])} over {last_entry(present[0])}")
                    written += save(fig, out_dir / "figures" / f"{name}_qualitative{suffix}_{dataset}")
    if log:
        log_outputs(uri, name, experiment, written)
    return md + (f"\n{contrasts_md}" if contrasts_md else "")


def log_outputs(uri: Optional[str], grid: str, experiment: Optional[str], written: List[Path]) -> None:
    """The tables and figures, to the grid's ``analysis`` run."""
    run = analysis_run(Store(uri), grid, experiment)
    for path in written:
        run.log_file(path, "figures" if path.parent.name == "figures" else "tables")
    run.set_tags({UPDATED: time.strftime("%Y-%m-%d %H:%M:%S")})


@errors.command
def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=errors.prog("analysis.make_tables"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", action="append", help="grid name (repeatable); default: every known grid in the store")
    ap.add_argument("--format", choices=["md", "latex", "csv"], default="md", help="file format beside the Markdown")
    ap.add_argument("--out-dir", type=Path, default=Path("results"))
    ap.add_argument("--experiment", help="MLflow experiment name (default: the grid's name)")
    ap.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--no-log", action="store_true", help="do not log tables and figures back to MLflow")
    ap.add_argument("--contrasts", action="store_true",
                    help="make and print only the contrasts table (each trick cell against its baseline) and its "
                         "forest plot")
    args = ap.parse_args(argv)
    grids = args.grid or table_grids()
    found, empty = 0, 0
    for grid in grids:  # a grid without runs is reported, and the others' tables are still made
        try:
            print(make(grid, args.format, args.out_dir, args.tracking_uri, args.experiment, not args.no_log,
                       args.contrasts))
            found += 1
        except NoStoreError:
            raise  # no grid is readable from a store that does not exist (errors.command says so)
        except NoRunsError as exc:
            if args.grid:  # asked for by name: an error
                print(f"error: {exc}", file=sys.stderr)
                empty += 1
            elif exc.experiment_exists:  # among every known grid, only those ever started are news
                print(f"note: {exc}", file=sys.stderr)
        except NoContrastsError as exc:
            print(f"{'error' if args.grid else 'note'}: {exc}", file=sys.stderr)
            empty += bool(args.grid)
        except Exception as exc:
            return exit_on_environment_error(exc, tracking_uri(args.tracking_uri))
    if not found and not args.grid:
        raise NoRunsError(f"no grid of {', '.join(grids)} has runs in {tracking_uri(args.tracking_uri)}",
                          experiment_exists=False)
    if found:
        print(f"tables and figures written to {args.out_dir}/")
    return 2 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
