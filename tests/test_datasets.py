import json

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from segtricks.config import DatasetRef
from segtricks.datasets import (DATASETS, DatasetError, EvalView, TrainView, boxes_from_mask, build_dataset,
                                SyntheticShapes)


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
        assert TrainView.collate([train[i] for i in range(3)]).shape == (2, 3, 16, 16)


def test_image_without_mask(duts_te):
    (duts_te / "DUTS-TE-Mask" / "im1.png").unlink()
    with pytest.raises(DatasetError, match=r"im1.jpg has no mask .*im1.png"):
        build_dataset(DatasetRef("duts_te", root=str(duts_te)))
    with pytest.warns(UserWarning, match="no mask"):
        raw = build_dataset(DatasetRef("duts_te", root=str(duts_te), on_error="skip"))
    assert len(raw) == 2 and [s.id for s in raw.skipped] == ["im1"]


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
