"""Tables and plots from logged runs: a reduced demo grid run in the test, plus hand-made cases."""
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.figures import pick_examples, plot_iou_vs_size, size_bins
from analysis.make_tables import main as make_tables
from analysis.runs import load_records, load_runs
from analysis.tables import build_table, to_latex, to_markdown, wide
from segtricks.ablate import main as ablate

TINY = ["--set", "optim.epochs=1", "--set", "optim.steps_per_epoch=2", "--set", "optim.batch_size=4",
        "--set", "data.train.limit=8", "--set", "data.val.limit=4",
        "--set", "eval=[{name: synthetic, split: test, limit: 6}]"]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    assert ablate(["--grid", "demo", "--tracking-uri", uri, *TINY]) == 0
    mp.undo()
    return root, uri


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


def test_size_histogram_counts_sum_to_the_number_of_images(demo_store):
    root, uri = demo_store
    runs = load_runs("demo", uri)
    records = load_records("demo", "synthetic", runs, uri)
    bins = size_bins(records)
    for cell in runs.cell:
        assert bins[bins.cell == cell]["count"].sum() == 6
    fig = plot_iou_vs_size({"synthetic": records}, list(runs.cell), "demo")
    assert len(fig.axes) == 2  # one panel (+ its count axis)


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
