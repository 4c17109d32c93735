"""The trained model as an MLflow model: logged once on a run, loaded by mlflow.pyfunc in a fresh process,
predicting the masks ``segment`` writes (issue 23)."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_config
from segtricks import segment
from segtricks.engine.training import Training
from segtricks.inference.mlflow_model import log_trained_model, logged_model_id
from segtricks.inference.predictor import Predictor
from segtricks.models.backbones import build_backbone
from segtricks.tracking.store import Store

FRESH = """
import sys, numpy as np, mlflow
from PIL import Image
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
images = [np.asarray(Image.open(p).convert("RGB")) for p in sys.argv[4:]]
masks = model.predict(images, params={"post": "gf"})
np.savez(sys.argv[3], *masks)
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny crop+gf training on demo_vit4 weights from a file, logged on a run of a fresh store."""
    root = tmp_path_factory.mktemp("mlflow_model")
    weights = root / "demo_vit4.pth"
    torch.save(build_backbone("demo_vit4", "random-init").vit.state_dict(), weights)
    training = Training(tiny_config(root / "training", {"tricks": ["crop", "gf"], "backbone.weights": str(weights)}))
    training.run()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = Store(uri)
    run = store.start(store.experiment("g"), "c", {})
    log_trained_model(run, training)
    log_trained_model(run, training)  # once: a second call logs nothing
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    for i, (w, h) in enumerate([(40, 30), (23, 57)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
    return root, uri, run, training, weights


@pytest.mark.slow
def test_the_model_loads_in_a_fresh_process_and_predicts_what_segment_writes(logged, tmp_path):
    root, uri, run, training, _ = logged
    outputs = run.client.get_run(run.id).outputs.model_outputs
    assert len(outputs) == 1 and logged_model_id(run) == outputs[0].model_id
    model = run.client.get_logged_model(outputs[0].model_id)
    assert "NOT the backbone's weights" in model.tags["mlflow.note.content"]
    paths = sorted((root / "images").glob("*.png"))
    done = subprocess.run([sys.executable, "-c", FRESH, uri, run.id, tmp_path / "masks.npz", *paths],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = np.load(tmp_path / "masks.npz")
    fresh = [fresh[f"arr_{i}"] for i in range(len(paths))]
    here = Predictor.from_training(training, post=["gf"]).predict([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    for a, b in zip(fresh, here):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-6, np.abs(a - b).max()
    out = tmp_path / "masks"
    assert segment.main(["--run", f"runs:/{run.id}/model", "--tracking-uri", uri, "--images", str(root / "images"),
                         "--out", str(out), "--soft", "--post", "gf"]) == 0
    for p, mask in zip(paths, fresh):
        assert np.array_equal(np.asarray(Image.open(out / p.name)), (mask * 255).round().astype(np.uint8))


@pytest.mark.slow
def test_loading_without_the_backbone_weights_is_one_line(logged, tmp_path, capsys, monkeypatch):
    root, uri, run, _, weights = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    weights.rename(weights.with_suffix(".away"))
    try:
        assert segment.main(["--run", run.id, "--images", str(root / "images"), "--out", str(tmp_path / "o")]) == 2
    finally:
        weights.with_suffix(".away").rename(weights)
    err = capsys.readouterr().err
    assert f"error: weights file {weights} does not exist" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_the_model_carries_the_metrics_of_its_best_epoch(logged, monkeypatch):
    _, uri, first, training, _ = logged
    store = Store(uri)
    run = store.start(first.experiment_id(), "trainer", {})
    for epoch, value in enumerate([0.2, 0.6, 0.4]):
        run.log_metrics({"val.iou": value}, step=epoch)
    monkeypatch.setattr(training, "status", lambda real=training.status(): dataclasses.replace(real, best_epoch=1))
    model_id = log_trained_model(run, training)
    assert model_id == logged_model_id(run)
    assert [(m.key, m.value, m.step) for m in run.client.get_logged_model(model_id).metrics] == [("val.iou", 0.6, 1)]
