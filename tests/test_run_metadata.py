"""What a cell's run tells the MLflow UI beside its results: the datasets it used (with digests), its
description, system metrics while it trains, and the link that opens the runs table."""
import json
import shutil

import pytest
from PIL import Image

from helpers import DEMO_CELL, TINY_FLAGS, store_client, write_grid
from segtricks.ablate import main
from segtricks.config.schema import DatasetRef
from segtricks.runners.plan import load_grid
from segtricks.tracking.dataset_inputs import dataset_input
from segtricks.tracking.description import cell_description
from segtricks.tracking.tags import NOTE
from segtricks.tracking.uri import runs_page


def folder_dataset(root, sizes=(16, 16)):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", (size, size), (200, 10, 10)).save(root / "images" / f"a{i}.png")
        Image.new("L", (size, size), 255).save(root / "masks" / f"a{i}.png")
    return root


def test_two_copies_of_a_folder_dataset_differ_in_digest_when_one_file_differs(tmp_path):
    first = folder_dataset(tmp_path / "first")
    same = dataset_input(DatasetRef("folder", str(shutil.copytree(first, tmp_path / "same"))), "evaluation")
    changed = folder_dataset(tmp_path / "changed", sizes=(16, 17))
    inputs = [dataset_input(DatasetRef("folder", str(root)), "evaluation") for root in (first, changed)]
    assert inputs[0].dataset.digest == same.dataset.digest != inputs[1].dataset.digest
    entity = inputs[0].dataset
    assert entity.name == "folder" and json.loads(entity.source) == {"uri": str(first.resolve())}
    assert json.loads(entity.profile)["num_items"] == 2
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "evaluation")]


def test_the_synthetic_dataset_records_its_split_seed_and_generator_version():
    entity = dataset_input(DatasetRef("synthetic", split="val", limit=4), "validation").dataset
    profile = json.loads(entity.profile)
    assert entity.name == "synthetic.val" and entity.source_type == "code"
    assert profile["num_items"] == 4 and profile["seed"] == 0 and len(profile["generator"]) == 12
    other = dataset_input(DatasetRef("synthetic", split="val", limit=5), "validation").dataset
    assert other.digest != entity.digest


def test_the_link_opens_the_runs_table_not_the_genai_overview():
    assert runs_page("sqlite:////x/mlflow.db", "3") == ("mlflow ui --backend-store-uri sqlite:////x/mlflow.db   then "
                                                        "open http://127.0.0.1:5000/#/experiments/3"
                                                        "?workflowType=machine_learning")
    assert runs_page("http://host:5000/", "3") == "the runs: http://host:5000/#/experiments/3?workflowType=machine_learning"


def test_the_description_names_the_cell_backbone_tricks_metrics_and_the_shared_model():
    cell = next(c for c in load_grid("demo").cells if c.name == "demo_vit4/crop+gf")
    text = cell_description(cell, "random-init", {"synthetic.iou": 0.71234, "synthetic.corloc": 93.25},
                            trains=False, model_from="abc", exp_id="1")
    assert text.startswith("**demo_vit4/crop+gf**")
    assert "`demo_vit4`, weights `random-init`" in text and "tricks: crop, gf" in text
    assert "- **synthetic**: IoU 0.712, maxFβ –, CorLoc (%) 93.2" in text
    assert "shared with run [abc](#/experiments/1/runs/abc)" in text


def cell_runs(tmp_path, grid):
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name(grid)
    return client, {r.data.tags["cell"]: r for r in client.search_runs([exp.experiment_id])}


def contexts(run):
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
            for i in run.inputs.dataset_inputs}


@pytest.mark.slow
def test_every_cell_run_logs_its_datasets_and_description_and_trainings_their_system_metrics(in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the test's training lasts seconds
    grid = write_grid(in_tmp, ["{name: baseline, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"], 2, "meta")
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    client, by_cell = cell_runs(in_tmp, "meta")
    trainer, sharer = by_cell["baseline"], by_cell["gf"]
    for run in (trainer, sharer):
        datasets = contexts(run)
        assert set(datasets) == {"training", "validation", "evaluation"}
        assert [datasets[c].name for c in ("training", "validation", "evaluation")] == \
            ["synthetic.train", "synthetic.val", "synthetic.test"]
        assert all(len(d.digest) == 16 for d in datasets.values())
        assert json.loads(datasets["evaluation"].profile)["num_items"] == 4
        assert run.data.tags[NOTE].startswith(f"**{run.data.tags['cell']}**")
        assert "- **synthetic**: IoU 0." in run.data.tags[NOTE]
    assert "trained by this run" in trainer.data.tags[NOTE]
    assert f"shared with run [{trainer.info.run_id}]" in sharer.data.tags[NOTE]
    assert "system/cpu_utilization_percentage" in trainer.data.metrics
    assert "system/system_memory_usage_megabytes" in trainer.data.metrics
    assert not any(k.startswith("system/") for k in sharer.data.metrics)  # it trains nothing
    # the sharer lists the trainer's model as its input; both runs' evaluations are on the model's page
    (output,) = client.get_run(trainer.info.run_id).outputs.model_outputs
    assert [m.model_id for m in client.get_run(sharer.info.run_id).inputs.model_inputs] == [output.model_id]
    linked = {(m.key, m.run_id, m.dataset_name, m.dataset_digest) for m in client.get_logged_model(output.model_id).metrics}
    test_digest = contexts(trainer)["evaluation"].digest
    for run in (trainer, sharer):
        assert ("synthetic.iou", run.info.run_id, "synthetic.test", test_digest) in linked


@pytest.mark.slow
def test_system_metrics_are_off_with_the_config_key_and_on_evaluation_only_cells(in_tmp, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    grid = write_grid(in_tmp, ["{name: baseline, set: {tricks: []}}"], name="one")
    assert main(["--grid", str(grid), *TINY_FLAGS, "--set", "tracking.system_metrics=false"]) == 0
    _, by_cell = cell_runs(in_tmp, "one")
    (run,) = by_cell.values()
    assert set(contexts(run)) == {"training", "validation", "evaluation"}
    assert not any(k.startswith("system/") for k in run.data.metrics)
    root, maps = folder_dataset(in_tmp / "ds"), in_tmp / "maps" / "folder"
    maps.mkdir(parents=True)
    for i in range(2):
        Image.new("L", (16, 16), 180).save(maps / f"a{i}.png")
    grid = in_tmp / "maps.yaml"
    grid.write_text(f"name: maps\nbase: {DEMO_CELL}\n"
                    f"set: {{maps: {in_tmp / 'maps'}, eval: [{{name: folder, root: {root}}}]}}\n"
                    "axes:\n  tricks:\n    - {name: baseline, set: {tricks: []}}\n")
    assert main(["--grid", str(grid)]) == 0
    _, by_cell = cell_runs(in_tmp, "maps")
    (run,) = by_cell.values()
    assert {c: d.name for c, d in contexts(run).items()} == {"evaluation": "folder"}
    assert not any(k.startswith("system/") for k in run.data.metrics)
    assert "precomputed maps" in run.data.tags[NOTE]

