"""The rehearsal grid: table3's model and training config at the paper's scale (ViT-S/8 and S/16 at
320², batch 8, crop + GF and crop + BF) for two steps per training on real photos, with weights in the
official checkpoint layouts loaded from $SEGTRICKS_WEIGHTS, the modern grid's backbones (DINOv2 with
registers at 322², DINOv3, TokenCut on DINOv2), then ``make_tables`` on its runs."""
import hashlib

import pytest
from mlflow.tracking import MlflowClient

from analysis.make_tables import main as make_tables
from helpers import REPO, require_shared

REHEARSAL = REPO / "benchmarks" / "rehearsal.yaml"
from segtricks.ablate import main as ablate
from segtricks.models.backbones import write_random_release
from segtricks.config.grid import read_grid



def test_rehearsal_keeps_table3s_model_and_training_config():
    table3 = dict(read_grid("table3").configs)["dino_s8/crop+gf"]
    rehearsal = dict(read_grid(str(REHEARSAL)).configs)
    for name in ("dino_s8/crop+gf", "ibot_s16/crop+bf"):
        cfg = rehearsal[name]
        assert (cfg.data.image_size, cfg.data.resize_short, cfg.optim.batch_size) == (320, 355, 8)
        assert (cfg.optim.lr, cfg.loss, cfg.crop) == (table3.optim.lr, table3.loss, table3.crop)
        assert "crop" in cfg.tricks and cfg.backbone.weights == "official-or-random-init"


@pytest.mark.slow
def test_rehearsal_grid_runs_on_official_layout_weights_and_make_tables_renders_it(tmp_path, monkeypatch, capsys):
    require_shared("sod300")
    require_shared("davis16")
    weights = {name: write_random_release(name, tmp_path / "weights")
               for name in ("dino_vits8", "ibot_vits16", "dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16")}
    monkeypatch.setenv("SEGTRICKS_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.chdir(REPO)  # run from the checkout: the grid's data roots are relative to it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the paper's shapes as the grid has them, on fewer evaluation images than a user's rehearsal (8, not
    # 24): the same code paths in less time (the distillation cell has no validation set to cut)
    fewer = ["--set", "eval=[{name: folder, root: ../shared/data/sod300, split: test, limit: 8}]"]
    assert ablate(["--grid", str(REHEARSAL), "--tracking-uri", uri, "--output-root", str(tmp_path / "outputs"), *fewer]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rehearsal").experiment_id])
    by_cell = {r.data.tags["cell"]: r for r in runs}
    assert sorted(by_cell) == ["dino_s8/crop+bf", "dino_s8/crop+gf", "dino_s8/selfmask_w_crop+gf",
                               "dinov2_s14/tokencut", "dinov2_s14_reg/crop+gf", "dinov3_s16/crop+bf",
                               "ibot_s16/crop+bf", "ibot_s16/crop+gf"]
    student = by_cell.pop("dino_s8/selfmask_w_crop+gf")
    tokencut = by_cell.pop("dinov2_s14/tokencut")
    for run in [*by_cell.values(), tokencut]:
        assert run.info.status == "FINISHED" and 0 <= run.data.metrics["folder.iou"] <= 1
        path = weights[run.data.tags["backbone"]]  # every backbone loaded its official-layout file
        assert run.data.tags["weights"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    for run in by_cell.values():  # each trained with crop, or reused a training that did
        assert "train.crop_eq" in run.data.metrics or "model_from_run" in run.data.tags
    assert not any(k.startswith("train.") for k in tokencut.data.metrics)
    # crop+bf shares crop+gf's training on S/8 and iBOT; DINOv2 (registers, 322²) and DINOv3 train once each
    assert sum(r.data.tags.get("role") == "train" for r in by_cell.values()) == 4
    # the second stage: SelfMask on 16 photos' pseudo-masks from dino_s8/crop+gf, after it, scored
    assert student.info.status == "FINISHED" and student.info.start_time > by_cell["dino_s8/crop+gf"].info.end_time
    assert "train.dice" in student.data.metrics and 0 <= student.data.metrics["folder.iou"] <= 1
    (pseudo,) = [i.dataset for i in student.inputs.dataset_inputs if i.dataset.name.startswith("pseudo-masks")]
    assert pseudo.name == "pseudo-masks of dino_s8/crop+gf on folder" and '"masks": 16' in pseudo.profile
    capsys.readouterr()
    out = tmp_path / "tables"
    assert make_tables(["--grid", str(REHEARSAL), "--tracking-uri", uri, "--out-dir", str(out)]) == 0
    assert (out / "rehearsal.md").is_file() and list((out / "figures").glob("rehearsal_size*.png"))
    table = (out / "rehearsal.md").read_text()
    assert "dino_s8/crop+gf" in table and "ibot_s16/crop+bf" in table
