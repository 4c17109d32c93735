"""Contrasts of an ablation table: which cells are compared, the rows against analysis.statistics
directly, Holm across the table, the seed note, what is left out, how the tables show them; and the
demo grid end to end (its contrasts table, forest plot, analysis run, and max_fbeta from its curves)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.contrasts import Contrast, contrast_rows, default_contrasts, grid_contrasts, method_note
from analysis.figures import contrast_labels, plot_contrasts
from analysis.make_tables import main as make_tables
from analysis.statistics import (MaxOfMeanCurve, MeanDifference, bca_interval, holm, paired_seed_means,
                                 seed_interval, sign_flip_p)
from analysis.tables import build_table, contrasts_csv, contrasts_frame, contrasts_latex, wide
from helpers import DEMO_CELL, TINY_FLAGS, demo_grid_store
from segtricks.config.grid import read_grid
from segtricks.tracking.tags import ANALYSIS, CELL

RESAMPLES = 999  # enough to compare with analysis.statistics on the same draws, quick to run


def test_each_trick_cell_is_contrasted_with_the_cell_of_its_backbone_without_tricks():
    contrasts = grid_contrasts(read_grid("table3"))
    assert [(c.trick, c.baseline) for c in contrasts] == [
        (f"{b}/{t}", f"{b}/baseline") for b in ("dino_s8", "dino_s16", "ibot_s16") for t in ("crop", "gf", "crop+gf")]
    assert [c.name for c in grid_contrasts(read_grid("demo"))] == [
        f"demo_vit4/{t} vs demo_vit4/baseline" for t in ("crop", "gf", "crop+gf")]


def test_a_cell_without_a_trick_free_twin_gets_no_contrast_and_the_first_twin_wins():
    cells = {"a/base": ((), "A"), "a/crop": (("crop",), "A"), "b/crop": (("crop",), "B"), "a/other": ((), "A")}
    assert default_contrasts(cells) == [Contrast("a/crop", "a/base")]


def test_the_contrasts_a_grid_file_declares_replace_the_default_rule(tmp_path):
    grid = tmp_path / "mine.yaml"
    grid.write_text(f"""name: mine
base: {DEMO_CELL}
axes:
  tricks:
    - {{name: baseline, set: {{tricks: []}}}}
    - {{name: crop, set: {{tricks: [crop]}}}}
    - {{name: crop+gf, set: {{tricks: [crop, gf]}}}}
table:
  datasets: [synthetic]
  metrics: [iou]
  contrasts:
    - {{trick: crop+gf, baseline: crop}}
""")
    assert grid_contrasts(read_grid(str(grid))) == [Contrast("crop+gf", "crop")]
    grid.write_text(grid.read_text().split("  contrasts:")[0])
    assert grid_contrasts(read_grid(str(grid))) == [Contrast("crop", "baseline"), Contrast("crop+gf", "baseline")]


def synthetic_evidence(n=120, seeds=("0",), effect=0.05, seed=0):
    """Per-image IoU and F curves of cells g/baseline, g/crop (better by ``effect``) and g/gf (noise
    only), per seed; the baseline scored 3 images more, listed in another order."""
    rng = np.random.default_rng(seed)
    scores, curves = {}, {}
    for s in seeds:
        base = rng.uniform(0.3, 0.9, n + 3)
        base_curve = rng.random((n + 3, 16))
        for cell, shift in (("g/baseline", None), ("g/crop", effect), ("g/gf", 0.0)):
            ids = [f"im{i:03d}" for i in range(n + 3 if shift is None else n)]
            iou = base[:len(ids)] + (0 if shift is None else shift + rng.normal(0, 0.1, n))
            curve = base_curve[:len(ids)] + (0 if shift is None else shift + rng.normal(0, 0.1, (n, 16)))
            order = rng.permutation(len(ids))
            scores[cell, s] = pd.Series(iou[order], index=pd.Index(ids)[order])
            curves[cell, s] = pd.DataFrame(curve[order], index=pd.Index(ids)[order])

    def evidence(cell, seed_, dataset, metric):
        if dataset != "synthetic":
            return None
        return (curves if metric == "max_fbeta" else scores).get((cell, seed_))
    return scores, curves, evidence


def test_delta_interval_and_p_are_those_of_analysis_statistics_on_the_paired_images():
    scores, curves, evidence = synthetic_evidence()
    contrasts = [Contrast("g/crop", "g/baseline"), Contrast("g/gf", "g/baseline")]
    table, notes = contrast_rows(contrasts, lambda cell: ["0"], ["synthetic"], ["iou", "max_fbeta", "s_measure"],
                                 evidence, resamples=RESAMPLES)
    assert notes == ["s_measure: no per-image evidence is logged for it, hence no contrast"] and len(table) == 4
    for _, row in table.iterrows():
        source = curves if row.metric == "max_fbeta" else scores
        trick, base = source[row.trick, "0"], source[row.baseline, "0"]
        ids = sorted(trick.index)  # the images both scored, paired by id
        kind = MaxOfMeanCurve if row.metric == "max_fbeta" else MeanDifference
        stat = kind(trick.loc[ids].to_numpy(float), base.loc[ids].to_numpy(float))
        assert row.n_images == 120 and row.n_seeds == 1
        assert row.delta == pytest.approx(stat.estimate(), abs=1e-12)
        assert (row.ci_low, row.ci_high) == pytest.approx(bca_interval(stat, RESAMPLES), abs=1e-12)
        assert row.p == pytest.approx(sign_flip_p(stat, RESAMPLES), abs=1e-12)
    crop = table[(table.trick == "g/crop") & (table.metric == "iou")].iloc[0]
    assert crop.ci_low > 0 and crop.p_holm < 0.05  # +0.05 over 120 images with noise 0.1: found


def test_holm_adjusts_across_every_contrast_dataset_and_metric_of_the_table():
    _, _, evidence = synthetic_evidence(effect=0.01)
    contrasts = [Contrast("g/crop", "g/baseline"), Contrast("g/gf", "g/baseline")]
    table, _ = contrast_rows(contrasts, lambda cell: ["0"], ["synthetic"], ["iou", "max_fbeta"], evidence,
                             resamples=RESAMPLES)
    assert list(table.p_holm) == pytest.approx(list(holm(table.p.to_numpy())))
    assert (table.p_holm >= table.p).all() and "Holm-adjusted across the table's 4 contrasts" in method_note(table)


def test_two_seeds_give_the_between_seed_picture_and_say_it_means_nothing_yet():
    scores, _, evidence = synthetic_evidence(seeds=("0", "1"))
    table, _ = contrast_rows([Contrast("g/crop", "g/baseline")], lambda cell: ["0", "1"], ["synthetic"], ["iou"],
                             evidence, resamples=RESAMPLES)
    row = table.iloc[0]
    ids = sorted(scores["g/crop", "0"].index)
    pairs = [(scores["g/crop", s].loc[ids].to_numpy(), scores["g/baseline", s].loc[ids].to_numpy()) for s in "01"]
    per_seed = [MeanDifference(t, b).estimate() for t, b in pairs]
    expected = seed_interval(per_seed)
    assert row.n_seeds == 2 and row.seeds == "0 1"
    assert [float(d) for d in row.seed_deltas.split()] == pytest.approx(per_seed, rel=1e-5)
    assert (row.seed_mean, row.seed_ci_low, row.seed_ci_high) == pytest.approx((expected.mean, expected.low,
                                                                                expected.high))
    assert row.delta == pytest.approx(MeanDifference(*paired_seed_means(pairs)).estimate())  # images: seed means
    assert row.note.startswith("2 seeds: a between-seed interval needs at least 3 seeds")
    assert "with fewer than 3 seeds a between-seed interval is meaningless" in method_note(table)
    shown = contrasts_frame(table)
    assert {"seeds", "Δ per seed", "seed mean", "seed CI low", "seed CI high"} <= set(shown.columns)
    assert "seed_mean" in contrasts_csv(table)
    one, _ = contrast_rows([Contrast("g/crop", "g/baseline")], lambda cell: ["0"], ["synthetic"], ["iou"],
                           evidence, resamples=RESAMPLES)
    assert "seed mean" not in contrasts_frame(one) and "seed_mean" not in contrasts_csv(one)


def test_runs_without_curves_leave_max_fbeta_out_with_a_note_never_an_error():
    _, _, evidence = synthetic_evidence()

    def before_curves(cell, seed, dataset, metric):
        return None if metric == "max_fbeta" and cell == "g/baseline" else evidence(cell, seed, dataset, metric)
    table, notes = contrast_rows([Contrast("g/crop", "g/baseline")], lambda cell: ["0"], ["synthetic"],
                                 ["iou", "max_fbeta"], before_curves, resamples=RESAMPLES)
    assert list(table.metric) == ["iou"]
    assert notes == ["max_fbeta of g/crop vs g/baseline on synthetic left out: g/baseline logged no per-image F "
                     "curves (curves/synthetic.npz; runs logged before they were kept have none: rerun those cells "
                     "for this contrast)"]
    table, notes = contrast_rows([Contrast("g/crop", "g/baseline")], lambda cell: [] if cell == "g/crop" else ["0"],
                                 ["synthetic"], ["iou"], evidence, resamples=RESAMPLES)
    assert table.empty and notes == ["g/crop vs g/baseline left out: no seed has a FINISHED run of both cells"]
    assert "Left out: g/crop vs g/baseline" in contrasts_latex(table, notes, "cap")


def test_the_main_table_shows_each_trick_cells_delta_interval_and_mark_beside_its_value():
    runs = pd.DataFrame([{"cell": c, "status": "FINISHED", "run_id": c, "backbone": "demo_vit4", "weights": "w",
                          "synthetic.iou": v, "synthetic.corloc": k}
                         for c, v, k in (("demo_vit4/baseline", 0.5, 60.0), ("demo_vit4/crop", 0.512, 62.5))])
    contrasts = pd.DataFrame([{"contrast": "demo_vit4/crop vs demo_vit4/baseline", "trick": "demo_vit4/crop",
                               "baseline": "demo_vit4/baseline", "dataset": "synthetic", "metric": m, "delta": d,
                               "ci_low": lo, "ci_high": hi, "p": p, "p_holm": p, "n_images": 200, "n_seeds": 1,
                               "note": ""} for m, d, lo, hi, p in (("iou", 0.012, 0.004, 0.020, 0.01),
                                                                     ("corloc", 2.5, -0.5, 5.0, 0.2))])
    table, notes, cap = build_table("demo", runs, contrasts)
    w = wide(table)
    assert w.loc["demo_vit4/crop", "Synthetic (test) IoU"] == "0.512 (+.012 [+.004, +.020]*)"
    assert w.loc["demo_vit4/crop", "Synthetic (test) CorLoc (%)"] == "62.5 (+2.5 [-0.5, +5.0])"
    assert w.loc["demo_vit4/baseline", "Synthetic (test) IoU"] == "0.500"
    assert "paired sign-flip permutation test" in cap and "unit: image" in cap and "9999 resamples" in cap
    assert "Seeds per contrast: 1" in cap
    assert build_table("demo", runs)[2] == cap.split(" In parentheses")[0]  # without contrasts: as before


def test_the_forest_plot_labels_contrasts_by_their_last_entries_and_has_a_panel_per_dataset_and_metric():
    rows = [{"contrast": f"{b}/{t} vs {b}/baseline", "trick": f"{b}/{t}", "baseline": f"{b}/baseline",
             "dataset": d, "metric": m, "delta": 0.01, "ci_low": -0.01, "ci_high": 0.03, "p": 0.3, "p_holm": 0.9,
             "n_images": 100, "n_seeds": 1} for b in ("dino_s8", "ibot_s16") for t in ("crop", "gf")
            for d in ("duts_te", "ecssd") for m in ("iou", "mae")]
    table = pd.DataFrame(rows)
    labels, common = contrast_labels(table)
    assert common == "" and labels["ibot_s16/gf vs ibot_s16/baseline"] == "ibot_s16: gf vs baseline"
    fig = plot_contrasts(table, "t")
    assert len(fig.axes) == 4
    assert "lower is better" in fig.axes[3].get_xlabel() and "higher is better" in fig.axes[0].get_xlabel()
    assert contrast_labels(table[table.trick.str.startswith("dino")])[1] == "dino_s8"


@pytest.fixture(scope="module")
def demo_contrasts(tmp_path_factory):
    """The demo grid at tiny sizes in a fresh store, then ``make_tables --contrasts``."""
    root = tmp_path_factory.mktemp("demo_contrasts")
    return root, demo_grid_store(root, TINY_FLAGS)


@pytest.mark.slow
def test_the_demo_grids_contrasts_table_forest_plot_and_analysis_run(demo_contrasts, capsys):
    root, uri = demo_contrasts
    out = root / "results"
    assert make_tables(["--grid", "demo", "--tracking-uri", uri, "--out-dir", str(out), "--contrasts"]) == 0
    printed = capsys.readouterr().out
    assert "| contrast | dataset | metric | Δ | CI low | CI high | p | p_holm | n images | n seeds |" in printed
    assert "| cell |" not in printed  # only the contrasts table is printed, and the main table not made
    csv = pd.read_csv(out / "demo_contrasts.csv")
    assert len(csv) == 3 * 1 * 3  # contrasts × datasets × metrics (iou, max_fbeta, corloc)
    assert set(csv.contrast) == {f"demo_vit4/{t} vs demo_vit4/baseline" for t in ("crop", "gf", "crop+gf")}
    assert (csv.n_images == 4).all() and (csv.n_seeds == 1).all() and csv.p_holm.notna().all()
    assert (out / "figures" / "demo_contrasts.png").stat().st_size > 0 and (out / "demo_contrasts.tex").is_file()
    assert not (out / "demo.md").exists()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    (analysis,) = client.search_runs([exp.experiment_id], f"tags.`{ANALYSIS}` = 'true'")
    logged = {a.path for folder in ("tables", "figures") for a in client.list_artifacts(analysis.info.run_id, folder)}
    assert {"tables/demo_contrasts.md", "tables/demo_contrasts.csv", "tables/demo_contrasts.tex",
            "figures/demo_contrasts.png", "figures/demo_contrasts.pdf"} <= logged


@pytest.mark.slow
def test_the_demo_runs_logged_max_fbeta_is_the_max_of_the_mean_of_their_logged_curves(demo_contrasts):
    from segtricks.tracking.artifacts import read_curves
    from segtricks.tracking.store import Store
    root, uri = demo_contrasts
    store = Store(uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id], f"tags.`{CELL}` != ''")
    assert len(runs) == 4
    for run in runs:
        curves = read_curves(store, run.info.run_id, "synthetic")
        assert curves.shape == (4, 255)
        assert curves.to_numpy(np.float64).mean(0).max() == pytest.approx(run.data.metrics["synthetic.max_fbeta"],
                                                                          abs=1e-6)


@pytest.mark.slow
def test_a_two_seed_demo_gives_seed_level_rows_and_says_two_seeds_are_too_few(tmp_path, monkeypatch, capsys):
    from segtricks.ablate import main as ablate
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert ablate(["--grid", "demo", "--seeds", "0,1", "--tracking-uri", uri, *TINY_FLAGS]) == 0
    capsys.readouterr()
    assert make_tables(["--grid", "demo", "--tracking-uri", uri, "--out-dir", "results", "--contrasts"]) == 0
    printed = capsys.readouterr().out
    assert "| n seeds | seeds | Δ per seed | seed mean | seed CI low | seed CI high |" in printed
    assert "with fewer than 3 seeds a between-seed interval is meaningless" in printed
    csv = pd.read_csv(tmp_path / "results" / "demo_contrasts.csv", dtype={"seeds": str})
    assert len(csv) == 9 and (csv.n_seeds == 2).all() and (csv.seeds == "0 1").all()
    assert csv.seed_ci_low.notna().all() and csv.note.str.startswith("2 seeds: ").all()
    for _, row in csv.iterrows():  # the seed mean is the mean of the per-seed Δs
        assert row.seed_mean == pytest.approx(np.mean([float(d) for d in row.seed_deltas.split()]), abs=1e-5)
