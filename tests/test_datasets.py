import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import require_shared
from segtricks.errors import BadInput
from segtricks.config.schema import ConfigError, DatasetRef, config_from_dict
from segtricks.data.datasets import DATASETS, DatasetError, SyntheticShapes, boxes_from_mask, build_dataset
from segtricks.data.synthetic import SPLIT_SIZES
from segtricks.data.views import EvalView, TrainView


def write_pairs(root, n=3, size=(40, 30)):
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(n):
        Image.fromarray(np.full(size[::-1] + (3,), 60 * i, np.uint8)).save(root / "img" / f"im{i}.jpg")
        mask = np.zeros(size[::-1], np.uint8)
        mask[5:15, 5:20] = 255
        Image.fromarray(mask).save(root / "gt" / f"im{i}.png")


@pytest.fixture
def duts_te(tmp_path):
    root = tmp_path / "DUTS-TE"
    write_pairs(root)
    (root / "img").rename(root / "DUTS-TE-Image")
    (root / "gt").rename(root / "DUTS-TE-Mask")
    return root


def test_saliency_release_layouts_load(duts_te, monkeypatch):
    monkeypatch.setenv("SEGTRICKS_DATA", str(duts_te.parent))
    raw = build_dataset(DatasetRef("duts_te"))
    assert len(raw) == 3 and raw.has_masks
    sample = raw.load(1)
    assert sample.id == "im1" and sample.mask.shape == (30, 40) and sample.mask.sum() == 150


@pytest.mark.parametrize("name,folder", [("duts_te", "DUTS-TE/"), ("dut_omron", "DUT-OMRON/"),
                                         ("ecssd", "ECSSD/"), ("voc07", "VOCdevkit/"), ("coco20k", "COCO/"),
                                         ("duts_tr", "DUTS-TR/")])
def test_missing_root_names_layout_and_source(name, folder, monkeypatch, tmp_path):
    monkeypatch.delenv("SEGTRICKS_DATA", raising=False)
    with pytest.raises(DatasetError, match=f"{folder}.*published at http"):
        build_dataset(DatasetRef(name))
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        build_dataset(DatasetRef(name, root=str(tmp_path / "nope")))


def test_mask_of_another_size_names_the_file(duts_te):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(duts_te / "DUTS-TE-Mask" / "im2.png")
    raw = build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.raises(DatasetError, match=r"im2.png is 10×10 but its image .*im2.jpg is 40×30"):
        raw.load(2)


def test_corrupt_image_names_the_file_and_skip_policy_counts(duts_te):
    (duts_te / "DUTS-TE-Image" / "im0.jpg").write_bytes(b"not a jpeg")
    raw = build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.raises(DatasetError, match="cannot read .*im0.jpg"):
        raw.load(0)
    view = EvalView(raw, 32, on_error="skip")
    with pytest.warns(UserWarning, match="im0.jpg"):
        batch = view.collate([view[i] for i in range(3)])
    assert batch.ids == ["im1", "im2"] and [s.id for s in batch.skipped] == ["im0"]
    train = TrainView(raw, 16, 20, on_error="skip")
    with pytest.warns(UserWarning):
        assert TrainView.collate([train[(i, i)] for i in range(3)]).shape == (2, 3, 16, 16)


def test_image_without_mask(duts_te):
    (duts_te / "DUTS-TE-Mask" / "im1.png").unlink()
    with pytest.raises(DatasetError, match=r"im1.jpg has no mask .*im1.png"):
        build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.warns(UserWarning, match="no mask"):
        raw = build_dataset(DatasetRef("duts_te", root=str(duts_te), on_error="skip"))
    assert len(raw) == 2 and [s.id for s in raw.skipped] == ["im1"]


def test_0_1_masks_have_value_1_as_foreground_said_once(duts_te):
    """Issue: 0/1 masks read at > 127 were all background (IoU 0.0000, no warning)."""
    for i in range(3):
        path = duts_te / "DUTS-TE-Mask" / f"im{i}.png"
        Image.fromarray((np.asarray(Image.open(path)) > 128).astype(np.uint8)).save(path)
    raw = build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.warns(UserWarning) as said:
        masks = [raw.load(i).mask for i in range(3)]
    assert [str(w.message) for w in said] == [
        f"dataset 'duts_te': masks valued 0/1 (first: {duts_te / 'DUTS-TE-Mask' / 'im0.png'}): value 1 is "
        f"foreground (0–255 masks: > 128)"]
    assert all(m.sum() == 150 for m in masks)  # as the 0/255 masks of test_saliency_release_layouts_load


def test_8_bit_masks_are_foreground_above_128_as_the_toolboxes(duts_te):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:20], mask[5:15, 4], mask[5:15, 20] = 255, 128, 129  # anti-aliased edges
    Image.fromarray(mask).save(duts_te / "DUTS-TE-Mask" / "im0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a binary mask with a few edge values is not reported
        got = build_dataset(DatasetRef("duts_te", root=str(duts_te))).load(0).mask
    np.testing.assert_array_equal(got, mask > 128)
    assert got.sum() == 160


@pytest.mark.parametrize("values,said", [
    (np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1)), r"im0.png is not binary \(9\d% of its pixels are "
                                                         r"neither 0 nor 255; a saliency map\?\): binarised at > 128"),
    (np.vstack([np.zeros((20, 40)), np.full((10, 40), 38)]).astype(np.uint8),  # a label or palette mask
     r"im0.png has non-zero values \(up to 38\) but none above 128, so it is scored as all background"),
], ids=["saliency map", "label mask"])
def test_masks_that_are_not_binary_are_reported_once(duts_te, values, said):
    for i in range(2):
        Image.fromarray(values).save(duts_te / "DUTS-TE-Mask" / f"im{i}.png")
    raw = build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.warns(UserWarning, match=said) as warned:
        raw.load(0), raw.load(1), raw.load(2)
    assert len(warned) == 1


def test_image_name_that_is_not_utf8_is_refused_or_skipped_by_repr(duts_te):
    """Issue: such a name reached pandas' records and printing as a lone surrogate (a traceback)."""
    image_dir = os.fsencode(duts_te / "DUTS-TE-Image")
    os.rename(os.path.join(image_dir, b"im1.jpg"), os.path.join(image_dir, b"caf\xe9.jpg"))
    name = repr(os.path.join(image_dir, b"caf\xe9.jpg"))
    with pytest.raises(DatasetError) as refused:
        build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    assert str(refused.value) == (f"image file name {name} is not valid UTF-8 (rename the file, or set on_error: "
                                  f"skip / pass --skip-bad)")
    with pytest.warns(UserWarning, match="is not valid UTF-8"):
        raw = build_dataset(DatasetRef("duts_te", root=str(duts_te), on_error="skip"))
    assert [raw.item_id(i) for i in range(len(raw))] == ["im0", "im2"]
    assert [(s.id, s.reason) for s in raw.skipped] == [("b'caf\\xe9'", f"file name {name} is not valid UTF-8")]
    assert all(s.id.isascii() and s.reason.isascii() for s in raw.skipped)


VOC_XML = """<annotation><size><width>50</width><height>40</height></size>
<object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_from_xml(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", (50, 40)).save(voc / "JPEGImages" / "000005.jpg")
    (voc / "Annotations" / "000005.xml").write_text(VOC_XML)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n")
    raw = build_dataset(DatasetRef("voc07", root=str(tmp_path / "VOCdevkit")))
    sample = raw.load(0)
    assert raw.has_boxes and not raw.has_masks
    np.testing.assert_array_equal(sample.boxes, [[0, 1, 20, 30], [29, 4, 50, 40]])  # 1-based inclusive → 0-based
    (voc / "Annotations" / "000005.xml").write_text("<annotation>")
    with pytest.raises(DatasetError, match="cannot read annotation .*000005.xml"):
        raw.load(0)


def test_coco20k_boxes_skip_crowds(tmp_path):
    coco = tmp_path / "COCO"
    (coco / "images" / "train2014").mkdir(parents=True)
    (coco / "annotations").mkdir()
    name = "COCO_train2014_000000000009.jpg"
    Image.new("RGB", (60, 40)).save(coco / "images" / "train2014" / name)
    (coco / "coco_20k_filenames.txt").write_text(f"train2014/{name}\n")
    (coco / "annotations" / "instances_train2014.json").write_text(json.dumps({
        "images": [{"id": 9, "file_name": name}],
        "annotations": [{"image_id": 9, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                        {"image_id": 9, "bbox": [0, 0, 60, 40], "iscrowd": 1}]}))
    sample = build_dataset(DatasetRef("coco20k", root=str(coco))).load(0)
    np.testing.assert_array_equal(sample.boxes, [[1, 2, 11, 22]])


def test_shared_sod300_through_the_folder_dataset():
    root = require_shared("sod300")
    raw = build_dataset(DatasetRef("folder", root=str(root)))
    assert len(raw) == 300 and raw.has_masks
    s = raw.load(0)
    assert s.mask.shape == (s.image.height, s.image.width) and 0 < s.mask.mean() < 1


def test_synthetic_is_deterministic_and_varied():
    a, b = SyntheticShapes("val"), SyntheticShapes("val")
    sa, sb = a.load(3), b.load(3)
    assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image)) and np.array_equal(sa.mask, sb.mask)
    assert not np.array_equal(SyntheticShapes("test").load(3).mask, sa.mask)  # splits are disjoint streams
    ratios = np.array([a.load(i).mask.mean() for i in range(100)])
    assert ratios.min() < 0.03 and ratios.max() > 0.3  # object sizes over more than a decade
    assert len(SyntheticShapes("train")) == 2000 and len(SyntheticShapes("train", limit=5)) == 5
    with pytest.raises(DatasetError, match="synthetic split 'dev' unknown"):
        SyntheticShapes("dev")


def test_boxes_from_mask_by_hand():
    m = np.zeros((10, 10), bool)
    m[1:3, 2:5] = True
    m[6:9, 6:7] = True
    assert sorted(map(tuple, boxes_from_mask(m).tolist())) == [(2, 1, 5, 3), (6, 6, 7, 9)]


def test_registry_lists_every_dataset_of_the_issue():
    assert {"duts_tr", "duts_te", "dut_omron", "ecssd", "voc07", "voc12", "coco20k", "folder",
            "synthetic"} <= set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_the_declared_splits_are_what_build_dataset_accepts(name, tmp_path):
    """Config validation checks ``split`` against the registered ``splits`` before anything is imported:
    each declared split builds, a split outside them is refused by both, and a dataset declaring none
    ignores ``split`` in both."""
    splits = DATASETS.attributes(name).get("splits")
    ref = {"name": name, "root": str(tmp_path / "absent"), "split": "tset"}
    if splits is None:
        assert config_from_dict({"eval": [ref]}).eval[0].split == "tset"
        return
    with pytest.raises(ConfigError, match=f"eval\\[0\\].split: expected a split of {name} "):
        config_from_dict({"eval": [ref]})
    with pytest.raises(DatasetError, match="split 'tset' unknown"):
        build_dataset(DatasetRef(name, str(tmp_path / "absent"), "tset"))
    for split in splits:  # past the split check: the dataset is absent, or built
        try:
            build_dataset(DatasetRef(name, str(tmp_path / "absent"), split, limit=1))
        except DatasetError as exc:
            assert "does not exist" in str(exc)
    if name == "synthetic":
        assert splits == tuple(SPLIT_SIZES)


def test_dataset_errors_are_bad_input():
    assert issubclass(DatasetError, BadInput) and issubclass(DatasetError, ValueError)
