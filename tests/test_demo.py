"""The embedded default learns: the weight-free demo beats the no-learning baseline on held-out data."""
from pathlib import Path

from segtricks.config import DatasetRef, load_config
from segtricks.evaluation import evaluate_maps, evaluate_model
from segtricks.training import Training

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo_cell.yaml"


def test_demo_cell_beats_the_centre_prior_on_the_test_split(tmp_path):
    cfg = load_config(DEMO, {"output_dir": str(tmp_path / "demo")})  # the README's demo cell as is
    training = Training(cfg)
    training.run()
    model = training.model()
    test = DatasetRef("synthetic", split="test")
    learned = evaluate_model(model, cfg, test, with_structure=False, progress=False).results()["iou"]
    prior = evaluate_maps(None, cfg, test, with_structure=False, progress=False).results()["iou"]
    assert learned > prior + 0.05, (learned, prior)
