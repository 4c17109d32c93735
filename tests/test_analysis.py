"""Tables and plots from logged runs: a reduced demo grid run in the test, plus hand-made cases; the
study plots' axes."""
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.figures import (MIN_IMAGES, bootstrap_ci, pick_examples, plot_iou_vs_size, plot_qualitative,
                              size_bins)
from analysis.make_tables import main as make_tables
from analysis.runs import load_records, load_runs
from analysis.tables import build_table, to_latex, to_markdown, wide
from helpers import demo_grid_store
from segtricks.runners.study_plots import thin_log_ticks, write_study_plots
from segtricks.tracking import artifacts
from segtricks.tracking.store import Store

TINY = ["--set", "optim.epochs=1", "--set", "optim.steps_per_epoch=2", "--set", "optim.batch_size=4",
        "--set", "data.train.limit=8", "--set", "data.val.limit=4",
        "--set", "eval=[{name: synthetic, split: test, limit: 6}]"]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_store")
    return root, demo_grid_store(root, TINY)


def test_table_cells_equal_the_metrics_of_their_runs(demo_store):
    root, uri = demo_store
    runs = load_runs("demo", uri)
    table, notes, cap = build_table("demo", runs)
    assert notes == []
    for _, run in runs.iterrows():
        row = table[(table.cell == run.cell) & (table.metric == "iou")].iloc[0]
        assert row["mean"] == pytest.approx(run["synthetic.iou"]) and row.n == 1
    md = to_markdown(table, notes, cap)
    base = runs[runs.cell == "demo_vit4/baseline"].iloc[0]
    assert f"| demo_vit4/baseline | {base['synthetic.iou']:.3f} |" in md
    assert "random-init" in cap and "NOT paper results" in cap and "`iou`" in cap


def test_missing_cells_render_as_missing_with_a_reason(demo_store, tmp_path):
    root, uri = demo_store
    runs = load_runs("demo", uri)
    gone = runs[runs.cell == "demo_vit4/gf"].run_id.iloc[0]
    failed = runs.copy()
    failed.loc[failed.cell == "demo_vit4/crop", "status"] = "FAILED"
    table, notes, cap = build_table("demo", failed[failed.run_id != gone])
    md = to_markdown(table, notes, cap)
    assert "| demo_vit4/gf | — | — | — |" in md and "| demo_vit4/crop | — |" in md
    assert "demo_vit4/gf: not run" in md and "demo_vit4/crop: failed" in md


def test_cli_writes_formats_and_logs_an_analysis_run(demo_store, tmp_path, capsys):
    root, uri = demo_store
    out = tmp_path / "results"
    assert make_tables(["--grid", "demo", "--tracking-uri", uri, "--out-dir", str(out), "--format", "csv"]) == 0
    assert (out / "demo.md").is_file() and (out / "demo.csv").is_file()
    assert (out / "figures" / "demo_size_demo_vit4.png").is_file() and (out / "figures" / "demo_size_demo_vit4.pdf").is_file()
    assert (out / "figures" / "demo_qualitative_demo_vit4_synthetic.png").is_file()
    csv = pd.read_csv(out / "demo.csv")
    assert {"cell", "dataset", "metric", "mean", "std", "n", "paper", "diff"} <= set(csv.columns)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    analysis = client.search_runs([exp.experiment_id], "tags.`segtricks.analysis` = 'true'")
    assert len(analysis) == 1
    logged = {a.path for a in client.list_artifacts(analysis[0].info.run_id, "figures")}
    assert "figures/demo_size_demo_vit4.png" in logged
    assert make_tables(["--grid", "table3", "--tracking-uri", uri]) == 2  # no such experiment: clear error
    assert "python -m segtricks.ablate --grid table3" in capsys.readouterr().err


def test_a_grid_whose_experiment_has_no_runs_is_named_and_the_other_grids_still_render(demo_store, tmp_path, capsys):
    """An experiment without runs (what a dry run used to create) crashed make_tables with
    AttributeError: 'DataFrame' object has no attribute 'status'."""
    root, uri = demo_store
    client = MlflowClient(uri)
    if client.get_experiment_by_name("table3") is None:
        client.create_experiment("table3")
    out = tmp_path / "results"
    assert make_tables(["--tracking-uri", uri, "--out-dir", str(out), "--no-log"]) == 0
    err = capsys.readouterr().err
    assert f"note: no runs for grid table3 in experiment 'table3' of {uri}; run " \
           f"`python -m segtricks.ablate --grid table3`\n" == err  # grids never started are not news
    assert (out / "demo.md").is_file() and not (out / "table3.md").exists()
    (out / "demo.md").unlink()
    assert make_tables(["--grid", "table3", "--grid", "demo", "--tracking-uri", uri, "--out-dir", str(out),
                        "--no-log"]) == 2
    assert capsys.readouterr().err.startswith("error: no runs for grid table3 in experiment 'table3'")
    assert (out / "demo.md").is_file()


def test_make_tables_without_a_store_says_so_and_creates_none(in_tmp, capsys):
    line = ("error: no MLflow store at ./mlflow.db; run a grid first (python -m segtricks.ablate --grid demo) "
            "or pass --tracking-uri\n")
    for argv in ([], ["--grid", "table3"]):
        assert make_tables(argv) == 2
        assert capsys.readouterr().err == line
    assert make_tables(["--tracking-uri", f"sqlite:///{in_tmp / 'sub' / 'x.db'}"]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store at ./sub/x.db; ")
    assert list(in_tmp.iterdir()) == []


def test_size_histogram_counts_sum_to_the_number_of_images(demo_store):
    root, uri = demo_store
    runs = load_runs("demo", uri)
    records = load_records("demo", "synthetic", runs, uri)
    bins = size_bins(records)
    for cell in runs.cell:
        assert bins[bins.cell == cell]["count"].sum() == 6
    fig = plot_iou_vs_size({"synthetic": records}, list(runs.cell), "demo")
    assert len(fig.axes) == 2  # one panel (+ its count axis)


def test_each_artifact_is_read_back_as_logged_at_the_paths_earlier_runs_used(tmp_path):
    import torch
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = store.start(store.experiment("x"), "r", {})
    records = pd.DataFrame({"image_id": ["a", "b"], "iou": [0.5, 1.0], "object_ratio": [0.1, 0.2]})
    artifacts.log_records(run, "synthetic", records, [("c", "unreadable")])
    artifacts.log_records(run, "synthetic.reference", records, [])
    image, gt, pred = torch.rand(3, 300, 400), torch.zeros(300, 400), torch.rand(300, 400)
    gt[100:200, 100:300] = 1
    artifacts.log_samples(run, "synthetic", [("a", image, gt, pred), ("b", image, None, pred)], "r on synthetic")
    logged = {a.path for folder in (None, "records", "samples") for a in store.client.list_artifacts(run.id, folder)}
    assert logged == {"predictions_synthetic.png", "records", "records/synthetic.csv", "records/synthetic.skipped.csv",
                      "records/synthetic.reference.csv", "samples", "samples/synthetic.npz"}
    skipped = store.client.download_artifacts(run.id, "records/synthetic.skipped.csv", str(tmp_path))
    assert Path(skipped).read_text() == "image_id,reason\nc,unreadable\n"
    pd.testing.assert_frame_equal(artifacts.read_records(store, run.id, "synthetic"), records)
    assert artifacts.read_records(store, run.id, "ecssd") is None  # not evaluated there
    samples = artifacts.read_samples(store, run.id, "synthetic")
    assert list(samples) == ["a", "b"]
    (im, mask, soft), (_, no_gt, _) = samples["a"], samples["b"]
    assert (im.shape, im.dtype, soft.dtype, mask.dtype) == ((144, 192, 3), np.uint8, np.uint8, bool)  # 192 px side
    assert mask.mean() == pytest.approx(gt.mean().item(), abs=0.01) and not no_gt.any()
    assert artifacts.read_samples(store, run.id, "ecssd") == {}


def test_bin_means_by_hand():
    records = pd.DataFrame({"cell": ["a"] * 5, "object_ratio": [0.01, 0.02, 0.5, 0.99, 1.0],
                            "iou": [0.2, 0.4, 0.6, 0.8, 1.0]})
    bins = size_bins(records).set_index("bin")
    assert list(bins.index) == [0, 10, 19]
    assert bins.loc[0, "mean_iou"] == pytest.approx(0.3) and bins.loc[0, "count"] == 2
    assert bins.loc[10, "mean_iou"] == pytest.approx(0.6)
    assert bins.loc[19, "mean_iou"] == pytest.approx(0.9) and bins.loc[19, "count"] == 2  # 1.0 in the last bin


def test_seeds_are_averaged_and_compared_with_the_paper():
    runs = pd.DataFrame([
        {"cell": "dino_s8/baseline", "status": "FINISHED", "run_id": "a", "backbone": "dino_vits8",
         "weights": "sha256:ab", "dut_omron.iou": 0.660, "duts_te.iou": 0.760, "ecssd.iou": 0.850},
        {"cell": "dino_s8/baseline", "status": "FINISHED", "run_id": "b", "backbone": "dino_vits8",
         "weights": "sha256:ab", "dut_omron.iou": 0.670, "duts_te.iou": 0.770, "ecssd.iou": 0.860},
        {"cell": "dino_s8/crop", "status": "RUNNING", "run_id": "c", "backbone": "dino_vits8", "weights": "x"},
    ])
    table, notes, cap = build_table("table3", runs)
    row = table[(table.cell == "dino_s8/baseline") & (table.dataset == "dut_omron")].iloc[0]
    assert row["mean"] == pytest.approx(0.665) and row.n == 2 and row["std"] == pytest.approx(np.std([.66, .67], ddof=1))
    assert row.paper == 0.664 and row["diff"] == pytest.approx(0.001)
    w = wide(table)
    assert w.loc["dino_s8/baseline", "DUT-OMRON IoU ours"] == "0.665 ± 0.007 (n=2)"
    assert w.loc["dino_s8/baseline", "DUT-OMRON IoU Δ"] == "+0.001"
    assert "dino_s8/crop: running" in notes and "ibot_s16/gf: not run" in notes
    assert "NOT paper results" not in cap and "dino_vits8: sha256:ab" in cap
    tex = to_latex(table, notes, cap)
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"dino\_s8/baseline" in tex


def test_qualitative_selection_rule_by_hand():
    records = pd.DataFrame({"cell": ["b"] * 4 + ["f"] * 4, "image_id": ["1", "2", "3", "4"] * 2,
                            "iou": [0.5, 0.5, 0.5, 0.5, 0.9, 0.6, 0.2, 0.45]})
    chosen = pick_examples(records, "b", "f", ["1", "2", "3", "4"], n=1)
    assert chosen == [("1", "gain +0.40"), ("3", "loss -0.30")]
    assert pick_examples(records, "b", "f", ["1", "2"], n=2) == [("1", "gain +0.40"), ("2", "gain +0.10")]


def test_bootstrap_interval_holds_the_mean_narrows_with_more_images_and_is_reproducible():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0, 1, 20), rng.uniform(0, 1, 2000)
    for values in (few, many):
        lo, hi = bootstrap_ci(values)
        assert lo < values.mean() < hi
    (lo_few, hi_few), (lo_many, hi_many) = bootstrap_ci(few), bootstrap_ci(many)
    assert hi_many - lo_many < (hi_few - lo_few) / 4  # width ~ 1/sqrt(n): 10x more samples, ~3.2x narrower
    assert bootstrap_ci(few) == (lo_few, hi_few)  # fixed seed
    assert bootstrap_ci([0.3]) == (0.3, 0.3)  # one image: no spread to resample, hence no interval drawn


def sparse_tail_records(cells):
    """20 images in the first bin, one image (IoU 0) in the last."""
    rows = []
    for k, cell in enumerate(cells):
        rows += [{"cell": cell, "object_ratio": 0.02, "iou": 0.5 + 0.01 * k + 0.02 * (i % 5)} for i in range(20)]
        rows.append({"cell": cell, "object_ratio": 0.99, "iou": 0.0})
    return pd.DataFrame(rows)


def test_size_bins_carry_an_interval_around_each_mean():
    bins = size_bins(sparse_tail_records(["a", "b"]))
    assert (bins.ci_low <= bins.mean_iou).all() and (bins.mean_iou <= bins.ci_high).all()
    dense = bins[bins["count"] == 20]
    assert (dense.ci_high - dense.ci_low > 0).all()


def test_size_plot_gives_each_cell_its_own_style_and_draws_sparse_bins_hollow_and_faded():
    cells = ["g/baseline", "g/crop", "g/gf", "g/crop+gf"]
    fig = plot_iou_vs_size({"synthetic": sparse_tail_records(cells)}, cells, "t")
    ax = fig.axes[0]
    full = [line for line in ax.lines if not line.get_label().startswith("_")]
    assert [line.get_label() for line in full] == ["baseline", "crop", "gf", "crop+gf"]
    assert len({(line.get_linestyle(), line.get_marker()) for line in full}) == 4
    assert len({line.get_color() for line in full}) == 4
    for line in full:  # the full-weight line stops before the one-image bin (IoU 0)...
        x, y = map(np.asarray, line.get_data())
        assert np.isnan(y[x > 0.9]).all() and not np.isnan(y[x < 0.1]).any()
    sparse = [line for line in ax.lines if line not in full and line.get_marker() != "None"]
    assert len(sparse) == 4  # ...and it is drawn hollow and faded instead
    for line in sparse:
        assert line.get_markerfacecolor() == "none" and line.get_alpha() <= 0.5
        assert line.get_linestyle() == "None" and (np.asarray(line.get_xdata()) > 0.9).all()
    bars = [c for c in ax.collections if c.get_segments()]  # error bars: only for bins of >= MIN_IMAGES images
    assert len(bars) == 4 and all(seg[:, 0].max() < 0.1 for c in bars for seg in c.get_segments())
    assert any(f"< {MIN_IMAGES} images" in t.get_text() for t in fig.legends[0].get_texts())
    assert any("95% bootstrap" in t.get_text() for t in fig.legends[0].get_texts())


def test_ties_are_never_labelled_gains_or_losses():
    ids = ["1", "2", "3", "4", "5", "6"]
    records = pd.DataFrame({"cell": ["b"] * 6 + ["f"] * 6, "image_id": ids * 2,
                            "iou": [0.5] * 6 + [0.8, 0.5, 0.504, 0.3, 0.497, 0.5]})
    chosen = pick_examples(records, "b", "f", ids, n=2)
    assert chosen == [("1", "gain +0.30"), ("4", "loss -0.20")]  # 0.004 and -0.003 print as ±0.00: ties
    zeros = records.assign(iou=0.0)
    assert pick_examples(zeros, "b", "f", ids, n=2) == [("1", "tie"), ("2", "tie")]
    for _, label in chosen + pick_examples(zeros, "b", "f", ids, n=2):
        assert "0.00" not in label


def test_qualitative_masks_share_a_fixed_0_1_scale_with_a_colour_bar():
    cells = ["g/baseline", "g/crop+gf"]
    gt = np.zeros((8, 12), bool)
    gt[2:6, 3:9] = True
    pred = np.full((8, 12), 128, np.uint8)  # stored soft maps are uint8 0–255
    samples = {c: {"1": (np.zeros((8, 12, 3), np.uint8), gt, pred)} for c in cells}
    records = pd.DataFrame({"cell": cells, "image_id": ["1", "1"], "iou": [0.2, 0.6]})
    fig = plot_qualitative(samples, records, cells, [("1", "gain +0.40")], "t")
    masks = [im for ax in fig.axes[1:4] for im in ax.get_images()]
    assert len(masks) == 3 and all(im.get_clim() == (0, 1) for im in masks)
    assert masks[-1].get_array().max() == pytest.approx(128 / 255)
    assert len(fig.axes) == 5  # 4 panels and the colour bar


def overlapping_labels(ax) -> bool:
    ax.figure.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_study_log_axes_get_few_plain_ticks_whose_labels_do_not_overprint():
    fig, ax = plt.subplots(figsize=(1.6, 2))  # a slice-plot panel; the data span under a decade
    ax.set_xscale("log")
    ax.set_xlim(0.0068, 0.0125)
    assert overlapping_labels(ax)  # matplotlib's own labels of the minor ticks collide here
    thin_log_ticks(ax)
    assert not overlapping_labels(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.007", "0.009"]
    ax.set_xlim(1e-4, 1e-1)  # four decades: every other one
    thin_log_ticks(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.01"]
    plt.close(fig)


def test_study_plots_are_written_and_leave_matplotlib_style_alone(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("gf.eps", 1e-4, 1e-2, log=True) + t.suggest_int("gf.radius", 1, 9),
                   n_trials=3)
    style = dict(matplotlib.rcParams)
    written = write_study_plots(study, tmp_path)
    assert {p.name for p in written} == {"optimization_history.png", "slice.png", "param_importances.png"}
    assert all(p.stat().st_size > 0 for p in written)
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style stays inside its figures


def test_the_logged_f_curves_read_back_and_give_the_runs_max_fbeta(tmp_path, monkeypatch):
    import numpy as np
    from segtricks.tracking import artifacts
    from segtricks.tracking.store import Store
    monkeypatch.chdir(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    run = store.start(store.experiment("e"), "r", {})
    curves = np.random.default_rng(0).random((5, 255)).astype(np.float32)
    artifacts.log_curves(run, "ecssd", [f"i{k}" for k in range(5)], curves)
    back = artifacts.read_curves(store, run.id, "ecssd")
    assert list(back.index) == [f"i{k}" for k in range(5)] and np.array_equal(back.to_numpy(), curves)
    assert artifacts.read_curves(store, run.id, "duts_te") is None
