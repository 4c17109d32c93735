"""The reference implementation's evaluation protocol (SPEC §8.2–8.4), reproduced on request.

Each of its three behaviours is pinned on a hand-made case: BatchNorm with test-batch statistics,
one inversion decision per batch, metrics on a centre crop of the resized ground truth.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_config
from segtricks.config import schema as config_module
from segtricks.config.schema import ConfigError, DatasetRef, config_from_dict, config_hash
from segtricks.registry import UnknownNameError
from segtricks.engine.training import training_hash
from segtricks.evaluate import main
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.evaluation.saliency_maps import evaluate_maps
from segtricks.evaluation.protocols import REFERENCE, Protocol, reference_boxes, reference_mask
from segtricks.models.model import build_model
from segtricks.evaluation.predict import backbone_keys, predict_masks, select_foreground, select_foreground_per_batch

# The reference's fields under another name: the evaluation reads what to do from the fields alone.
RENAMED = Protocol("renamed", batch_size=8, centre_crop=True, batch_statistics=True, per_batch_foreground=True,
                   metric_prefix="renamed", keeps_samples=False)


def small_cfg(tmp_path, over=None):
    """The tiny cell without a validation set: nothing here trains."""
    return tiny_config(tmp_path / "run", {"data.val": None, **(over or {})})


def test_per_batch_inversion_flips_an_image_that_per_image_inversion_keeps():
    # image 0 has mean 0.3 (already the smaller side), image 1 mean 0.9: batch mean 0.6 > 0.5
    masks = torch.stack([torch.full((1, 4, 4), 0.3), torch.full((1, 4, 4), 0.9)])
    ours, reference = select_foreground(masks), select_foreground_per_batch(masks)
    torch.testing.assert_close(ours[:, 0, 0, 0], torch.tensor([0.3, 0.1]))
    torch.testing.assert_close(reference[:, 0, 0, 0], torch.tensor([0.7, 0.1]))  # image 0 flipped by its neighbour
    # a batch whose mean is ≤ 0.5 is left alone even where one image is mostly foreground
    kept = select_foreground_per_batch(torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.8)]))
    torch.testing.assert_close(kept[:, 0, 0, 0], torch.tensor([0.1, 0.8]))


def test_reference_prediction_uses_test_batch_statistics_and_leaves_the_model_unchanged(tmp_path):
    cfg = small_cfg(tmp_path)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    together = predict_masks(model, images, cfg, protocol="reference")
    alone = predict_masks(model, images[:1], cfg, protocol="reference")
    assert (together[:1] - alone).abs().max() > 1e-4  # batch statistics: neighbours change a mask
    for k, v in model.head.state_dict().items():  # running statistics not updated by the test batches
        torch.testing.assert_close(v, before[k], msg=k)
    assert not model.training  # the caller's mode is restored
    ours_together = predict_masks(model, images, cfg)
    torch.testing.assert_close(ours_together[:1], predict_masks(model, images[:1], cfg))
    with torch.no_grad():  # by hand: BatchNorm in train mode, then one inversion for the batch
        model.train()
        fine = model(images, backbone_keys(model, images))["fine"]  # the keys every evaluation path uses
    torch.testing.assert_close(together, 1 - fine if fine.mean() > 0.5 else fine)
    torch.testing.assert_close(predict_masks(model, images, cfg, protocol=REFERENCE), together)
    torch.testing.assert_close(predict_masks(model, images, cfg, protocol=RENAMED), together)


def test_batch_statistics_and_per_batch_inversion_are_separate_switches(tmp_path):
    cfg = small_cfg(tmp_path)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    only_bn = Protocol("only_bn", batch_size=None, centre_crop=False, batch_statistics=True,
                       per_batch_foreground=False, metric_prefix="only_bn", keeps_samples=False)
    with torch.no_grad():
        model.train()
        fine = model(images, backbone_keys(model, images))["fine"]  # the keys every evaluation path uses
        model.eval()
    torch.testing.assert_close(predict_masks(model, images, cfg, protocol=only_bn), select_foreground(fine))
    assert not model.training


def test_ground_truth_is_resized_and_centre_cropped_by_hand():
    # a 4×8 mask whose left quarter is the object; size 2: resized to 2×4, centre crop keeps columns 1–2
    gt = torch.zeros(4, 8, dtype=torch.bool)
    gt[:, :2] = True
    assert not reference_mask(gt, 2).any()
    gt = torch.zeros(4, 8, dtype=torch.bool)
    gt[:, 2:6] = True  # the middle half: exactly the crop
    assert reference_mask(gt, 2).all()
    # portrait 8×4: resized to 4×2, the centre crop keeps rows 1–2 of 4
    gt = torch.zeros(8, 4, dtype=torch.bool)
    gt[:2] = True
    assert not reference_mask(gt, 2).any()


def test_boxes_follow_the_same_resize_and_crop():
    # 4×8 image, size 2: scale 0.5, crop offset 1 column
    out = reference_boxes(np.array([[0, 0, 2, 4], [2, 0, 6, 4], [3, 1, 8, 3]]), 4, 8, 2)
    np.testing.assert_allclose(out, [[0, 0, 2, 2], [0.5, 0.5, 2, 1.5]])  # the left-quarter box left the crop
    # against the mask transform on an odd shape: the box of the cropped mask is the mapped box (±1 px)
    h, w, size = 37, 61, 20
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[5:30, 30:55] = True
    crop = reference_mask(mask, size)
    ys, xs = np.nonzero(crop.numpy())
    (box,) = reference_boxes(np.array([[30, 5, 55, 30]]), h, w, size)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1)


def test_maps_are_scored_on_the_centre_crop(tmp_path):
    # 16×32 images; map = GT inside the centre 16×16 crop, false positives in the left quarter
    root, maps = tmp_path / "ds", tmp_path / "maps"
    for d in (root / "images", root / "masks", maps):
        d.mkdir(parents=True)
    gt = np.zeros((16, 32), np.uint8)
    gt[4:12, 12:20] = 255
    pred = gt.copy()
    pred[:, :6] = 255
    for i in range(3):
        Image.new("RGB", (32, 16), (90, 90, 90)).save(root / "images" / f"m{i}.png")
        Image.fromarray(gt).save(root / "masks" / f"m{i}.png")
        Image.fromarray(pred).save(maps / f"m{i}.png")
    cfg = small_cfg(tmp_path, {"data.image_size": 16})
    dataset = DatasetRef("folder", root=str(root))
    ours = evaluate_maps(maps, cfg, dataset, progress=False).results()
    reference = evaluate_maps(maps, cfg, dataset, progress=False, protocol="reference").results()
    assert ours["iou"] == pytest.approx(64 / (64 + 96))
    assert reference["iou"] == pytest.approx(1.0)
    assert evaluate_maps(maps, cfg, dataset, progress=False, protocol=RENAMED).results() == reference


def test_model_evaluation_under_both_protocols(tmp_path):
    cfg = small_cfg(tmp_path)
    model = build_model(cfg)
    test = DatasetRef("synthetic", split="test", limit=10)
    ours = evaluate_model(model, cfg, test, with_structure=False, progress=False).results()
    reference = evaluate_model(model, cfg, test, with_structure=False, progress=False, protocol="reference").results()
    assert ours["n_images"] == reference["n_images"] == 10
    assert ours["iou"] != reference["iou"]
    renamed = evaluate_model(model, cfg, test, with_structure=False, progress=False, protocol=RENAMED).results()
    assert renamed == reference
    with pytest.raises(UnknownNameError, match="unknown evaluation protocol 'theirs'; registered evaluation "
                                               "protocols: ours, reference"):
        evaluate_model(model, cfg, test, progress=False, protocol="theirs")


def test_config_names_the_protocol_and_it_does_not_change_the_training(tmp_path):
    assert small_cfg(tmp_path).eval_protocols == ["ours"]
    both = small_cfg(tmp_path, {"eval_protocols": ["ours", "reference"]})
    assert training_hash(small_cfg(tmp_path)) == training_hash(both)
    assert config_hash(both) != config_hash(small_cfg(tmp_path))
    with pytest.raises(ConfigError, match="eval_protocols: 'paper' is not a protocol; expected some of ours, reference"):
        small_cfg(tmp_path, {"eval_protocols": ["paper"]})


def test_the_old_eval_protocol_key_reads_as_the_list_it_meant_with_one_line_and_the_same_hash(tmp_path, capsys,
                                                                                             monkeypatch):
    monkeypatch.setattr(config_module, "_warned_legacy", set())  # one line per source and process
    legacy = small_cfg(tmp_path, {"eval_protocol": "reference"})
    assert legacy.eval_protocols == ["ours", "reference"]
    assert config_hash(legacy) == config_hash(small_cfg(tmp_path, {"eval_protocols": ["reference", "ours"]}))
    # the hash the key had before eval_protocols existed (commit c8f5d0c): every earlier run stays done
    assert config_hash(config_from_dict({"eval_protocol": "reference"})) == \
        "2d01b42286797290716c455d6e3533517aa0d9a2707db4266720ffd746140957"
    assert config_hash(config_from_dict({})) == "8e5b9a5d41d2f6914d6a96b164bc29ea011e32c0e576b84f91a5f494d3b378d6"
    warned = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert len(warned) == 2 and "write eval_protocols: [ours, reference]" in warned[0]
    with pytest.raises(ConfigError, match="eval_protocol and eval_protocols are both set"):
        small_cfg(tmp_path, {"eval_protocol": "ours", "eval_protocols": ["ours"]})


def test_evaluate_cli_names_the_protocol(tmp_path, capsys):
    assert main(["--centre-prior", "--dataset", "synthetic", "--split", "test", "--limit", "4",
                 "--eval-protocol", "reference"]) == 0
    assert "evaluation protocol: reference" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # the choices are the registry's names
        main(["--centre-prior", "--dataset", "synthetic", "--eval-protocol", "theirs"])
    assert refused.value.code == 2 and "(choose from 'ours', 'reference')" in capsys.readouterr().err
