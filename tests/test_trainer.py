"""The one-cell trainer on the weight-free demo backbone and synthetic data (tiny sizes)."""
import pytest
import torch

from segtricks import checkpoint, losses
from segtricks.config import config_from_dict
from segtricks.predict import predict_masks, select_foreground
from segtricks.registry import UnknownNameError
from segtricks.trainer import Hook, NonFiniteLossError
from segtricks.training import ConfigMismatchError, Training


def tiny(tmp_path, name="run", **over):
    d = {
        "backbone": {"name": "demo_vit4"},
        "data": {"train": {"name": "synthetic", "limit": 16},
                 "val": {"name": "synthetic", "split": "val", "limit": 8},
                 "image_size": 32, "resize_short": 36, "num_workers": 0},
        "optim": {"epochs": 2, "batch_size": 4, "steps_per_epoch": 2},
        "tricks": ["crop", "gf"],
        "output_dir": str(tmp_path / name),
    }
    for key, value in over.items():
        node = d
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(d)


class Interrupt(Exception):
    pass


class OnEpoch(Hook):
    """Calls fn(epoch, metrics) after each epoch (after the checkpoint)."""

    def __init__(self, fn):
        self.fn = fn

    def after_epoch(self, state, metrics):
        self.fn(state.epoch, metrics)


def trained(cfg, *hooks):
    training = Training(cfg)
    training.run(hooks)
    return training


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    full = trained(tiny(tmp_path, "full"))

    def stop_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise Interrupt

    cfg = tiny(tmp_path, "resumed")
    with pytest.raises(Interrupt):
        trained(cfg, OnEpoch(stop_after_first_epoch))
    assert checkpoint.load(cfg.output_dir + "/last.pt")["epoch"] == 0
    seen = []
    resumed = trained(cfg, OnEpoch(lambda e, m: seen.append(e)))
    assert seen == [1]  # only the second epoch ran
    a = checkpoint.load(full.last_path)["head"]
    b = checkpoint.load(resumed.last_path)["head"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history() == resumed.history()


def test_training_changes_the_head_and_is_deterministic(tmp_path):
    cfg = tiny(tmp_path, "a", optim__epochs=1)
    first = checkpoint.load(trained(cfg).last_path)["head"]
    second = checkpoint.load(trained(tiny(tmp_path, "b", optim__epochs=1)).last_path)["head"]
    torch.manual_seed(cfg.seed)
    from segtricks.model import build_model
    init = build_model(cfg).head.state_dict()
    assert any(not torch.equal(first[k], init[k]) for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_finished_training_does_no_more_work(tmp_path):
    cfg = tiny(tmp_path)
    trained(cfg)
    ran = []
    result = trained(cfg, OnEpoch(lambda e, m: ran.append(e)))
    assert ran == [] and len(result.history()) == 2


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    result = trained(tiny(tmp_path, optim__epochs=3))
    ious = [h["val.iou"] for h in result.history()]
    best = checkpoint.load(result.best_path)
    assert best["epoch"] == result.status().best_epoch == ious.index(max(ious))
    assert best["weights_id"] == "random-init"
    assert (result.dir / "config.yaml").read_text().count("demo_vit4") == 1


def test_output_dir_of_another_config_is_refused(tmp_path):
    trained(tiny(tmp_path, optim__epochs=1))
    with pytest.raises(ConfigMismatchError, match="another config"):
        trained(tiny(tmp_path, optim__epochs=1, optim__lr=1e-3))


def test_nan_loss_stops_naming_step_and_term(tmp_path, monkeypatch):
    monkeypatch.setattr(losses, "fine_graph_tv", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1: fine_tv=nan"):
        trained(tiny(tmp_path))


@pytest.mark.parametrize("over,error,match", [
    ({"tricks": ["crop", "sharpen"]}, UnknownNameError, "unknown trick 'sharpen'; registered tricks: bf, crop, gf"),
    ({"backbone__name": "dino_vitz8"}, UnknownNameError, "registered backbones: .*dino_vits8"),
    ({"data__image_size": 34, "data__resize_short": 40}, ValueError, "34 is not divisible by the patch size 4"),
])
def test_bad_cell_fails_before_training(tmp_path, over, error, match):
    with pytest.raises(error, match=match):
        trained(tiny(tmp_path, **over))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_prediction_uses_running_batchnorm_statistics(tmp_path):
    """A mask must not depend on which other images share its batch (SPEC §8.2)."""
    cfg = tiny(tmp_path, optim__epochs=1)
    from segtricks.model import build_model
    model = build_model(cfg)
    model.head.load_state_dict(checkpoint.load(trained(cfg).last_path)["head"])
    model.train()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    together = predict_masks(model, images, cfg)
    alone = predict_masks(model, images[:1], cfg)
    torch.testing.assert_close(together[:1], alone)
    assert model.training  # the caller's mode is restored


def test_foreground_is_selected_per_image():
    masks = torch.stack([torch.full((1, 4, 4), 0.9), torch.full((1, 4, 4), 0.2)])
    out = select_foreground(masks)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.1, 0.2]))
