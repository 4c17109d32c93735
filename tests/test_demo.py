"""The embedded default learns: the weight-free demo beats the no-learning baseline on held-out data."""
import pytest

from helpers import DEMO_CELL as DEMO
from segtricks.config.schema import DatasetRef, load_config
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.evaluation.saliency_maps import evaluate_maps
from segtricks.engine.training import Training


@pytest.mark.slow
def test_demo_cell_beats_the_centre_prior_on_the_test_split(tmp_path):
    cfg = load_config(DEMO, {"output_dir": str(tmp_path / "demo")})  # the README's demo cell as is
    training = Training(cfg)
    training.run()
    model = training.model()
    test = DatasetRef("synthetic", split="test")
    learned = evaluate_model(model, cfg, test, with_structure=False, progress=False).results()["iou"]
    prior = evaluate_maps(None, cfg, test, with_structure=False, progress=False).results()["iou"]
    assert learned > prior + 0.05, (learned, prior)


def test_the_demo_grid_cannot_silently_grow():
    """Issue 14: the demo's size is pinned (its wall time is a benchmark figure, not a test). Shrinking
    it is welcome: update the numbers here and the README's demo figures together."""
    from segtricks.runners.plan import load_grid
    grid = load_grid("demo")
    trainings = {c.training_hash: c.cfg for c in grid.cells if c.trains}
    pixels_trained = sum(c.optim.epochs * c.optim.steps_per_epoch * c.optim.batch_size * c.data.image_size ** 2
                         for c in trainings.values())
    assert len(grid.cells) == 4 and len(trainings) == 2
    assert pixels_trained <= 2 * 2 * 24 * 4 * 56 ** 2  # 2 trainings × 2 epochs × 24 steps × 4 images of 56²
    assert all(c.data.val.limit <= 32 for c in trainings.values())  # validated every epoch
    assert all(ref.split == "test" and (ref.limit or 200) <= 200 for c in grid.cells for ref in c.cfg.eval)
