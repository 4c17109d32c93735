"""``python -m segtricks.segment``: masks of a trained model on a folder of images (issue 23)."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import pngs_of, random_photos, tiny_config
from segtricks import segment
from segtricks.engine.training import Training
from segtricks.tracking.store import Store
from segtricks.tracking import tags

SIZES = [(40, 30), (23, 57), (64, 64)]  # (W, H): none the model's 56²


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The demo cell's crop+gf training at the tiny size (seconds)."""
    root = tmp_path_factory.mktemp("training")
    t = Training(tiny_config(root / "training", {"tricks": ["crop", "gf"]}))
    t.run()
    return t


def images_folder(tmp_path, bad=True):
    folder = random_photos(tmp_path / "images", SIZES)
    if bad:
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


masks_of = pngs_of


def test_one_mask_per_image_at_its_size_binary_soft_overlay_and_the_unreadable_listed(training, tmp_path, capsys):
    images = images_folder(tmp_path)
    out = tmp_path / "masks"
    assert segment.main(["--run", str(training.dir), "--images", str(images), "--out", str(out), "--overlay",
                         "--post", "gf"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 mask(s)" in printed and "skipped 1 unreadable image(s): broken.jpg" in printed
    masks = masks_of(out)
    assert sorted(masks) == ["im0", "im1", "im2"]
    for i, (w, h) in enumerate(SIZES):
        assert masks[f"im{i}"].shape == (h, w) and set(np.unique(masks[f"im{i}"])) <= {0, 255}
        assert np.asarray(Image.open(out / "overlays" / f"im{i}.png")).shape == (h, w, 3)
    soft = tmp_path / "soft"
    assert segment.main(["--run", str(training.dir), "--images", str(images / "*.png"), "--out", str(soft),
                         "--soft", "--post", "gf"]) == 0
    soft_masks = masks_of(soft)
    assert len(np.unique(soft_masks["im2"])) > 2
    for name, binary in masks.items():  # the binary mask is the soft one at 0.5 (up to 8-bit rounding)
        assert np.mean((soft_masks[name] > 127.5) == (binary > 0)) > 0.99


def test_a_rerun_skips_existing_masks_and_overwrite_redoes_them(training, tmp_path, capsys):
    images, out = images_folder(tmp_path, bad=False), tmp_path / "masks"
    args = ["--run", str(training.dir), "--images", str(images), "--out", str(out)]
    assert segment.main(args) == 0
    (out / "im0.png").unlink()
    before = (out / "im1.png").stat().st_mtime_ns
    capsys.readouterr()
    assert segment.main(args) == 0
    assert "wrote 1 mask(s)" in capsys.readouterr().out and (out / "im1.png").stat().st_mtime_ns == before
    assert segment.main(args) == 0 and "all 3 mask(s) exist" in capsys.readouterr().out
    assert segment.main(args + ["--overwrite"]) == 0 and "wrote 3 mask(s)" in capsys.readouterr().out


def test_a_failing_writer_leaves_no_png(training, tmp_path, monkeypatch):
    images, out = images_folder(tmp_path, bad=False), tmp_path / "masks"

    def half_then_fail(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    assert segment.main(["--run", str(training.dir), "--images", str(images), "--out", str(out)]) == 130  # Ctrl-C
    assert list(out.iterdir()) == []


def test_bad_input_is_one_line(training, tmp_path, capsys):
    images = images_folder(tmp_path, bad=False)
    (tmp_path / "empty").mkdir()
    run = ["--run", str(training.dir)]
    cases = [
        (["--images", str(tmp_path / "missing"), "--out", "o"], f"--images {tmp_path / 'missing'}: no such folder"),
        (["--images", str(tmp_path / "empty"), "--out", "o"], f"--images {tmp_path / 'empty'}: no images"),
        (["--images", str(images), "--out", str(images / "masks")], "is inside the images folder"),
    ]
    for args, line in cases:
        assert segment.main(run + args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and line in err and err.count("\n") == 1, err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(uri)
    lonely = store.start(store.experiment("g"), "c", {tags.CELL: "demo_vit4/crop"})
    for run_id, line in [("0123456789abcdef0123456789abcdef", "no run with that id (or id prefix) in"),
                         (lonely.id, f"--run {lonely.id} (cell demo_vit4/crop): the run has no model"),
                         # the 8 characters the grid's summary prints find the run
                         (lonely.id[:8], f"--run {lonely.id[:8]} (cell demo_vit4/crop): the run has no model")]:
        assert segment.main(["--run", run_id, "--tracking-uri", uri, "--images", str(images), "--out", "o"]) == 2
        err = capsys.readouterr().err
        assert line in err and err.count("\n") == 1, err


def test_missing_backbone_weights_name_the_file(training, tmp_path, capsys):
    folder = tmp_path / "moved"
    folder.mkdir()
    cfg = yaml.safe_load((training.dir / "config.yaml").read_text())
    cfg["backbone"]["weights"] = str(tmp_path / "vit.pth")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "best.pt").write_bytes(training.best_path.read_bytes())
    images = images_folder(tmp_path, bad=False)
    assert segment.main(["--run", str(folder), "--images", str(images), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"error: weights file {tmp_path / 'vit.pth'} does not exist" in err and err.count("\n") == 1


def test_predict_refuses_an_array_that_is_not_an_rgb_image(training):
    from segtricks.data.datasets import DatasetError
    from segtricks.inference.predictor import Predictor

    predictor = Predictor.from_training(training, device="cpu")
    good = np.zeros((20, 30, 3), np.uint8)
    assert [m.shape for m in predictor.predict([good])] == [(20, 30)]
    for bad, shape in [(np.zeros((20, 30)), "float64 of shape (20, 30)"), (np.zeros((20, 30, 4), np.uint8), "(20, 30, 4)")]:
        with pytest.raises(DatasetError, match=r"image 1: expected an HxWx3 uint8 RGB array, got .*" + re.escape(shape)):
            predictor.predict([good, bad])


def test_a_cell_run_gets_its_own_post_processing_unless_post_says_otherwise(training, tmp_path, capsys):
    from segtricks.method.tricks import TRICKS, get_tricks

    assert set(segment.POST_TRICKS) == {n for n in TRICKS.names() if get_tricks([n])[0].stage == "post"}
    images = images_folder(tmp_path, bad=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(uri)
    cell = store.start(store.experiment("g"), "c", {tags.CELL: "demo_vit4/crop+gf", tags.TRICKS: "crop,gf"})
    cell.log_params({"output_dir": str(training.dir)})  # no logged model: its training folder is used
    written = {}
    for name, post in [("cell", []), ("gf", ["--post", "gf"]), ("none", ["--post"])]:
        out = tmp_path / name
        assert segment.main(["--run", cell.id[:8], "--tracking-uri", uri, "--images", str(images), "--out", str(out),
                             "--soft", *post]) == 0
        printed = capsys.readouterr().out
        assert ("post-processing: gf, as cell demo_vit4/crop+gf was evaluated" in printed) == (name == "cell")
        written[name] = masks_of(out)
    for image in written["cell"]:
        assert np.array_equal(written["cell"][image], written["gf"][image])
    assert any(not np.array_equal(written["cell"][i], written["none"][i]) for i in written["cell"])


def test_other_backbone_weights_than_the_head_was_trained_on_say_what_to_use(training, tmp_path, capsys):
    import torch

    from segtricks.models.backbones import build_backbone

    vit = build_backbone("demo_vit4", "random-init").vit
    weights = tmp_path / "other.pth"
    torch.save({k: v + 1 for k, v in vit.state_dict().items()}, weights)
    folder = tmp_path / "moved"
    folder.mkdir()
    cfg = yaml.safe_load((training.dir / "config.yaml").read_text())
    cfg["backbone"]["weights"] = str(weights)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "best.pt").write_bytes(training.best_path.read_bytes())
    assert segment.main(["--run", str(folder), "--images", str(images_folder(tmp_path, bad=False)),
                         "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'best.pt'} was trained on backbone weights random-init" in err
    assert f"demo_vit4 resolves to sha256:" in err and f"here ({weights})" in err
    assert "it was trained on a random-init backbone: set backbone.weights to random-init" in err
