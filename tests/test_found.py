"""FOUND (issue 30) against its authors' code: the background of ``compute_img_bkg_seg`` on the six golden
cases (``../shared/golden/baselines.npz``); the bilateral-solver targets of its training on scenes drawn
here, against ``tests/data/found_targets.npz``, which FOUND's own ``misc.batch_apply_bilateral_solver``
computed from them (valeoai/FOUND at 1ad22ba, run once outside this repository with ``.cuda()`` made a
no-op and SciPy's ``cg(tol=)`` spelled ``rtol=``); and hand cases for each loss term, the schedule, the
single-component mode and the box."""
from pathlib import Path

import numpy as np
import pytest
import torch



TARGETS = Path(__file__).parent / "data" / "found_targets.npz"
SCENE_SIZE, PATCH = 96, 8


def scene(i: int):
    """(image (H, W, 3) uint8, patch mask (h, w) float32 0/1): textured background, ellipses of their own
    colours, and a patch mask that is right, wrong or too large, case by case."""
    rng = np.random.default_rng(300 + i)
    n = SCENE_SIZE
    y, x = np.mgrid[:n, :n] / n
    image = np.empty((n, n, 3))
    image[:] = rng.uniform(40, 120, 3)
    image += 25 * np.sin(9 * x + 5 * y)[..., None] + rng.normal(0, 6, (n, n, 3))
    ellipses = {0: [(0.45, 0.5, 0.22, 0.3)], 1: [(0.45, 0.5, 0.22, 0.3)], 2: [(0.5, 0.5, 0.45, 0.47)],
                3: [(0.3, 0.3, 0.15, 0.18), (0.7, 0.72, 0.18, 0.15)]}[i]
    objects = np.zeros((n, n), bool)
    for cy, cx, ry, rx in ellipses:
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(150, 240, 3) + rng.normal(0, 6, (inside.sum(), 3))
        objects |= inside
    image = image.clip(0, 255).astype(np.uint8)
    h = n // PATCH
    patches = objects.reshape(h, PATCH, h, PATCH).mean(axis=(1, 3)) > 0.5
    if i == 0:  # right, with a few patches wrong
        flips = rng.random((h, h)) < 0.08
        mask = patches ^ flips
    elif i == 1:  # unrelated to the object: a block in a corner
        mask = np.zeros((h, h), bool)
        mask[:4, -5:] = True
    else:  # the objects (case 2: larger than the background)
        mask = patches
    return image, mask.astype(np.float32)


def batch(cases):
    images = torch.stack([torch.from_numpy(scene(i)[0]).permute(2, 0, 1).float() / 255 for i in cases])
    masks = torch.stack([torch.from_numpy(scene(i)[1]) for i in cases])
    return images, masks


@pytest.mark.parametrize("i", range(6))
def test_background_equals_the_authors_compute_img_bkg_seg(baselines, i):
    from segtricks.methods.found import background_masks
    keys = torch.from_numpy(baselines[f"case{i}_keys"][:, 1:])
    attention = torch.from_numpy(baselines[f"case{i}_found_cls_attention"][:, :, 1:])
    rows, cols = baselines[f"case{i}_grid_hw"]
    ours = background_masks(attention, keys, 0.3).reshape(rows, cols).numpy()
    theirs = baselines[f"case{i}_found_background"].astype(bool)
    assert theirs.any() and (~theirs).any()  # a case with both sides
    assert np.array_equal(ours, theirs)


def test_bilateral_solver_targets_equal_the_authors():
    """FOUND's ``batch_apply_bilateral_solver(get_all_cc=True)`` on four scenes: accepted (0, 3), rejected by
    the IoU gate (1: an unrelated mask) and the foreground dropped as the largest region (2)."""
    from segtricks.methods.found import refined_by_bilateral_solver
    theirs = np.load(TARGETS)["targets"]
    images, masks = batch(range(4))
    ours = refined_by_bilateral_solver(masks, images, 0.5).numpy()
    assert ours.shape == theirs.shape == (4, SCENE_SIZE // PATCH, SCENE_SIZE // PATCH)
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours[0], masks[0].numpy())  # refined
    assert np.array_equal(ours[1], masks[1].numpy())  # the gate kept the mask
    assert np.array_equal(ours[2], masks[2].numpy())  # background kept by get_all_cc: IoU below the gate


def test_all_but_largest_region_drops_the_foreground_when_it_is_largest():
    from segtricks.methods.found import all_but_largest_region
    small = np.zeros((6, 6), bool)
    small[1:3, 1:3] = small[4:, 4:] = True
    assert np.array_equal(all_but_largest_region(small), small)  # the background (label 0) is largest
    large = np.ones((6, 6), bool)
    large[0, :] = False
    assert np.array_equal(all_but_largest_region(large), ~large)  # the foreground goes, the background stays


class Outputs:
    """A model's outputs on a two-image batch at a 12×12 grid, and the images."""

    def __init__(self):
        images, masks = batch([0, 3])
        self.images = images
        g = torch.Generator().manual_seed(0)
        self.logits = (4 * (masks - 0.5) + torch.randn(masks.shape, generator=g))[:, None]
        keys = torch.randn(2, 12, 144, generator=g)
        attention = torch.softmax(torch.randn(2, 3, 145, generator=g), dim=-1)[:, :, 1:]
        self.out = {"logits": self.logits, "features": keys.reshape(2, 12, 12, 12), "attention": attention}


def test_each_training_term_is_the_bce_against_its_target():
    """Before ``stop_bkg_loss``: bs (own prediction, BS-refined) and bkg (inverted background, BS-refined);
    after: bs and self (own prediction, not refined), each BCE-with-logits as the authors' flattened mean."""
    import torch.nn.functional as F
    from segtricks.config.schema import config_from_dict
    from segtricks.methods.found import FoundRecipe, background_masks, refined_by_bilateral_solver
    cfg = config_from_dict({"method": "found", "found": {"stop_bkg_loss": 100}})
    o, recipe = Outputs(), FoundRecipe()
    predicted = (torch.sigmoid(o.logits) > 0.5).float()

    def bce(target):  # nn.BCEWithLogitsLoss on (B·h·w, 1), as the authors flatten
        return F.binary_cross_entropy_with_logits(o.logits.permute(0, 2, 3, 1).reshape(-1, 1),
                                                  target.reshape(-1).float()[:, None])

    early = recipe.loss_terms(None, o.images, o.out, cfg, step=99)
    late = recipe.loss_terms(None, o.images, o.out, cfg, step=100)
    assert set(early) == {"bs", "bkg"} and set(late) == {"bs", "self"}
    own = refined_by_bilateral_solver(predicted[:, 0], o.images, 0.5)
    assert torch.allclose(early["bs"], bce(own)) and torch.allclose(late["bs"], bce(own))
    keys = o.out["features"].flatten(2).transpose(1, 2)
    foreground = (~background_masks(o.out["attention"], keys, 0.3)).reshape(2, 12, 12).float()
    assert torch.allclose(early["bkg"], bce(refined_by_bilateral_solver(foreground, o.images, 0.5)))
    assert torch.allclose(late["self"], bce(predicted))
    # a hand case of the BCE itself: logits 0 against any target is log 2
    zero = {**o.out, "logits": torch.zeros_like(o.logits)}
    assert torch.allclose(recipe.loss_terms(None, o.images, zero, cfg, step=100)["self"], torch.tensor(np.log(2.0)).float())
    assert recipe.loss_weights(cfg) == {"bs": 1.5, "bkg": 1.0, "self": 4.0}


def test_learning_rate_steps_as_steplr_50_095():
    from segtricks.config.schema import config_from_dict
    from segtricks.methods.found import FoundRecipe
    cfg = config_from_dict({"method": "found"})
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.95)  # the authors', stepped per iteration
    for step in range(501):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-2 * FoundRecipe().lr_factor(cfg, step), rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_single_mode_keeps_the_largest_foreground_component_and_the_box_is_the_patch_components():
    from segtricks.methods.found import largest_foreground
    binary = np.zeros((8, 8), bool)
    binary[0:2, 0:2] = True  # 4 pixels
    binary[4:7, 3:6] = True  # 9 pixels
    binary[7, 7] = True
    assert largest_foreground(binary).sum() == 9 and largest_foreground(binary)[5, 4]
    assert not largest_foreground(np.zeros((4, 4), bool)).any()
    diagonal = np.eye(4, dtype=bool)  # 4-connected: four components of one pixel
    assert largest_foreground(diagonal).sum() == 1


def test_found_predicts_at_the_image_size_in_both_modes():
    """A trained-like decoder on the demo backbone: the mask at the image's size (single: binary and one
    4-connected component; multi: the sigmoid), the box inside the image."""
    from scipy import ndimage
    from segtricks.config.schema import config_from_dict
    from segtricks.methods.found import Found, FoundRecipe
    for mode in ("single", "multi"):
        cfg = config_from_dict({"method": "found", "backbone": {"name": "demo_vit4", "weights": "random-init"},
                                "data": {"image_size": 56, "resize_short": 63}, "found": {"mode": mode}})
        torch.manual_seed(0)
        model = FoundRecipe().build_model(cfg)
        image = torch.rand(3, 37, 50)
        out = Found(cfg, model).predict(image, "saliency")
        assert out.mask.shape == (37, 50) and out.mask.dtype == np.float32
        assert 0 <= out.box[0] < out.box[2] <= 50 and 0 <= out.box[1] < out.box[3] <= 37
        if mode == "single":
            assert set(np.unique(out.mask)) <= {0.0, 1.0} and ndimage.label(out.mask)[1] <= 1
        else:
            assert len(np.unique(out.mask)) > 2


def test_training_view_is_the_authors_augmentation_and_reproducible():
    from PIL import Image
    from segtricks.data.datasets import Sample
    from segtricks.data.views import FoundTrainView

    class One:
        def __len__(self):
            return 1

        def load(self, i):
            return Sample("a", Image.fromarray(scene(0)[0]).resize((120, 90)))

        def item_id(self, i):
            return "a"

    view = FoundTrainView(One(), 56)
    assert view.kernel == 5  # int(0.1·56 // 2 · 2) + 1, the authors' rule (23 at 224)
    a, b, c = view[(0, 1)], view[(0, 1)], view[(0, 2)]
    assert a.shape == (3, 56, 56) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.slow
def test_a_found_cell_trains_once_is_scored_in_both_modes_and_segments(tmp_path, monkeypatch, capsys):
    """A grid of FOUND cells on the demo backbone: one training (its three loss terms logged, as scheduled)
    shared by single, multi and GF cells, each scored per image; the table shows them beside the published
    row; ``segment`` on the cell's run writes a mask per image at the image's size."""
    from helpers import DEMO_CELL, grid_runs, pngs_of, random_photos
    from analysis.make_tables import main as make_tables
    from segtricks import segment
    from segtricks.ablate import main as ablate
    grid = tmp_path / "f.yaml"
    grid.write_text(f"""name: f
base: {DEMO_CELL}
set:
  method: found
  tricks: []
  data.val: null
  data.train: {{name: synthetic, split: train, limit: 16}}
  optim: {{epochs: 2, steps_per_epoch: 2, batch_size: 4, lr: 5.0e-2, weight_decay: 0.01}}
  found: {{stop_bkg_loss: 3, lr_step: 1}}
  eval: [{{name: synthetic, split: test, limit: 6}}]
axes:
  post:
    - {{name: single, set: {{tricks: []}}}}
    - {{name: multi, set: {{found.mode: multi}}}}
    - {{name: gf, set: {{tricks: [gf]}}}}
table:
  title: FOUND on the demo
  datasets: [synthetic]
  metrics: [iou, corloc]
  literature:
    FOUND - single: [.5, 50.0]
""")
    monkeypatch.chdir(tmp_path)
    assert ablate(["--grid", str(grid)]) == 0
    client, runs = grid_runs(tmp_path, "f")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    by = {r.data.tags["cell"]: r for r in runs}
    trainer = [r for r in runs if r.data.tags.get("role") == "train"]
    assert len(trainer) == 1 and len(list((tmp_path / "outputs").rglob("last.pt"))) == 1  # one training
    history = {k: [m.value for m in client.get_metric_history(trainer[0].info.run_id, f"train.{k}")]
               for k in ("loss", "bs", "bkg", "self")}
    assert len(history["loss"]) == 2 and len(history["bs"]) == 2  # an epoch mean each
    assert len(history["bkg"]) == 2 and len(history["self"]) == 1  # bkg in steps 0-2, self from step 3
    for r in runs:
        assert r.data.metrics["synthetic.n_images"] == 6 and 0 <= r.data.metrics["synthetic.iou"] <= 1
    assert by["multi"].data.metrics["synthetic.iou"] != by["single"].data.metrics["synthetic.iou"] or \
        by["multi"].data.metrics["synthetic.max_fbeta"] != by["single"].data.metrics["synthetic.max_fbeta"]
    capsys.readouterr()
    assert make_tables(["--grid", str(grid), "--out-dir", str(tmp_path / "t")]) == 0
    table = (tmp_path / "t" / "f.md").read_text()
    assert "gf" in table and "FOUND - single (published)" in table
    images = random_photos(tmp_path / "images", [(40, 30), (23, 57)])
    assert segment.main(["--run", by["single"].info.run_id, "--images", str(images), "--out", str(tmp_path / "m")]) == 0
    masks = pngs_of(tmp_path / "m")
    assert [m.shape for m in masks.values()] == [(30, 40), (57, 23)]
    assert all(set(np.unique(m)) <= {0, 255} for m in masks.values())
