"""A study's plots, as PNG files for its MLflow parent run: Optuna's optimisation history, slice and
(given two varied parameters) importance plots, drawn with matplotlib (headless: the Agg backend)."""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import List

import matplotlib
import optuna
from matplotlib import ticker
from optuna.trial import TrialState


def write_study_plots(study: optuna.Study, folder: Path) -> List[Path]:
    """The plots as ``<folder>/<name>.png``; a plot Optuna cannot draw for this study is skipped with a note."""
    import matplotlib.pyplot as plt  # Optuna's matplotlib plots draw through pyplot
    plt.switch_backend("agg")  # files only: no display is needed, nor opened when there is one
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    plots = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
             "slice": optuna.visualization.matplotlib.plot_slice}
    if len(complete) >= 2 and len(study.best_params) >= 2:
        plots["param_importances"] = optuna.visualization.matplotlib.plot_param_importances
    written = []
    for name, plot in plots.items():
        # Optuna switches matplotlib to its ggplot style globally: keep that to these figures
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # we chose these plots
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of constant objectives
                print(f"note: {name} plot skipped: {exc}", file=sys.stderr)
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            if not hasattr(ax, "flat"):  # the slice plot's panels keep Optuna's width each
                fig.set_size_inches(8, 5)
            for panel in fig.axes:
                if panel.get_xscale() == "log":
                    thin_log_ticks(panel)
            if name == "slice":  # its colour bar counts trials: no "trial 0.4" ticks
                fig.axes[-1].yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            written.append(folder / f"{name}.png")
            # the slice plot's colour bar has its own axes beside the panels; a tight box keeps it
            fig.savefig(written[-1], dpi=120, bbox_inches="tight")
            plt.close(fig)
    return written


def thin_log_ticks(ax) -> None:
    """At most three round ticks (decades, else 1-3, 1-2-5 or 1…9 × 10^k) on a log x axis, printed
    plainly: matplotlib labels minor ticks of axes spanning under a decade, and in a narrow slice
    panel those long labels overprint."""
    lo, hi = ax.get_xlim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 3), (1, 2, 5), range(1, 10)):  # the coarsest set giving two ticks
        ticks = [s * 10.0 ** k for k in decades for s in subs if lo <= s * 10.0 ** k <= hi]
        if len(ticks) >= 2:
            break
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks[::math.ceil(len(ticks) / 3) or 1]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
