"""Metrics against independent truth: published SOD scores, pysodmetrics, hand-built cases."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_shared
from segtricks.datasets import boxes_from_mask
from segtricks.metrics import SaliencyEvaluator, box_iou, corloc_hit, largest_component_box


def load_gray(path):
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="module")
def sod_dss():
    root = require_shared("sod300")
    pairs = []
    for mask in sorted((root / "masks").glob("*.png")):
        gt = load_gray(mask) > 128
        pred = load_gray(root / "maps" / "DSS" / mask.name)
        pairs.append((mask.stem, pred, gt))
    return pairs


@pytest.fixture(scope="module")
def dss_results(sod_dss):
    ev = SaliencyEvaluator()
    for image_id, pred, gt in sod_dss:
        ev.update(torch.from_numpy(pred / 255.0), torch.from_numpy(gt), image_id)
    return ev


@pytest.mark.parametrize("protocol,published", [
    ("max_fbeta_pr_curve", 0.844),   # SOD toolbox: max F
    ("mean_fbeta_adaptive", 0.795),  # SOD toolbox: mean F
    ("mae", 0.121),
    ("s_measure", 0.751),
    ("max_fbeta", 0.804),            # max of the mean F curve (TokenCut/MOVE), data README
    ("max_fbeta_per_image", 0.835),  # mean of per-image max F (SelfMask/FOUND), data README
])
def test_published_dss_scores_on_sod(dss_results, protocol, published):
    assert dss_results.results()[protocol] == pytest.approx(published, abs=0.002)


def test_agrees_with_pysodmetrics_on_the_dss_maps(sod_dss, dss_results):
    psm = pytest.importorskip("py_sod_metrics", reason="pysodmetrics is the second implementation")
    fm, mae, sm, em = psm.FmeasureV2(metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)}), psm.MAE(), psm.Smeasure(), psm.Emeasure()
    for _, pred, gt in sod_dss:
        p, g = pred / 255.0, gt
        fm.step(p, g, normalize=False)
        mae.step(p, g, normalize=False)
        sm.step(p, g, normalize=False)
        em.step(p, g, normalize=False)
    ours = dss_results.results()
    assert ours["max_fbeta"] == pytest.approx(fm.get_results()["fm"]["dynamic"].max(), abs=1e-3)
    assert ours["mean_fbeta_adaptive"] == pytest.approx(fm.get_results()["fm"]["adaptive"], abs=1e-6)
    assert ours["mae"] == pytest.approx(mae.get_results()["mae"], abs=1e-7)  # float32 sums
    assert ours["s_measure"] == pytest.approx(sm.get_results()["sm"], abs=1e-6)
    curve = em.get_results()["em"]["curve"]
    assert ours["max_e_measure"] == pytest.approx(curve.max(), abs=2e-3)
    assert ours["mean_e_measure"] == pytest.approx(curve.mean(), abs=2e-3)


def test_binary_iou_and_accuracy_equal_pysodmetrics(sod_dss):
    psm = pytest.importorskip("py_sod_metrics", reason="pysodmetrics is the second implementation")
    handlers = {"iou": psm.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True),
                "acc": psm.OverallAccuracyHandler(with_dynamic=False, with_adaptive=False, with_binary=True,
                                                 sample_based=True)}
    theirs = psm.FmeasureV2(metric_handlers=handlers)
    ours = SaliencyEvaluator(with_structure=False)
    rng = np.random.default_rng(0)
    for image_id, pred, gt in sod_dss[:100]:
        p = np.clip(pred / 255.0 + rng.normal(0, 0.2, pred.shape), 0, 1)  # not only 0/255 values
        theirs.step(p, gt, normalize=False)
        ours.update(torch.from_numpy(p), torch.from_numpy(gt), image_id)
    res = theirs.get_results()
    assert ours.results()["iou"] == pytest.approx(res["iou"]["binary"], abs=1e-9)
    assert ours.results()["acc"] == pytest.approx(res["acc"]["binary"], abs=1e-9)


def test_hand_computed_small_case():
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:2, :2] = True  # 4 foreground pixels
    pred = torch.zeros(4, 4, dtype=torch.float64)
    pred[:2, :3] = 0.9  # 6 predicted: 4 TP, 2 FP
    ev = SaliencyEvaluator()
    row = ev.update(pred, gt, "a")
    ev.records()  # completes the batched fields
    assert row["iou"] == pytest.approx(4 / 6)
    assert row["acc"] == pytest.approx(14 / 16)
    assert row["mae"] == pytest.approx((4 * 0.1 + 2 * 0.9) / 16)
    assert row["object_ratio"] == 0.25
    p, r = 4 / 6, 1.0
    f = 1.3 * p * r / (0.3 * p + r)
    assert ev.results()["max_fbeta"] == pytest.approx(f)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="resize the prediction"):
        SaliencyEvaluator().update(torch.zeros(4, 5), torch.zeros(4, 4, dtype=torch.bool), "x")


def test_float32_and_float64_inputs_agree():
    rng = np.random.default_rng(1)
    a, b = SaliencyEvaluator(), SaliencyEvaluator()
    for i in range(5):
        gt = rng.random((30, 40)) > 0.6
        pred = np.clip(gt * 0.7 + rng.random((30, 40)) * 0.4, 0, 1)
        a.update(torch.from_numpy(pred), torch.from_numpy(gt), str(i))
        b.update(torch.from_numpy(pred).float(), torch.from_numpy(gt), str(i))
    ra, rb = a.results(), b.results()
    for k in ra:
        assert ra[k] == pytest.approx(rb[k], abs=1e-4), k  # float32 rounding near thresholds
    assert len(a.records()) == 5 and {"image_id", "object_ratio", "iou"} <= set(a.records().columns)


# --- CorLoc -------------------------------------------------------------------------------------

def test_largest_component_box_by_hand():
    m = np.zeros((10, 12), dtype=bool)
    m[1:3, 1:3] = True  # 4 px
    m[5:9, 4:10] = True  # 24 px: the largest
    m[8, 10] = True  # diagonal neighbour joins the large component (8-connectivity)
    assert largest_component_box(m) == (4, 5, 11, 9)
    assert largest_component_box(np.zeros((3, 3), dtype=bool)) is None


def test_box_iou_and_corloc_hits_by_hand():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    m = np.zeros((20, 20), dtype=bool)
    m[0:10, 0:10] = True
    hit, box = corloc_hit(m, [(30, 30, 40, 40), (0, 0, 10, 12)])  # IoU 100/120 with the second box
    assert hit and box == (0, 0, 10, 10)
    assert not corloc_hit(m, [(5, 0, 15, 10)])[0]  # IoU 1/3
    assert not corloc_hit(np.zeros((5, 5), dtype=bool), [(0, 0, 5, 5)])[0]


def test_corloc_on_davis_perfect_and_shifted_predictions():
    root = require_shared("davis16")
    perfect, shifted = SaliencyEvaluator(with_structure=False), SaliencyEvaluator(with_structure=False)
    masks = sorted((root / "masks").glob("*.png"))
    assert len(masks) == 141
    for path in masks:
        gt = load_gray(path) > 127
        boxes = boxes_from_mask(gt)
        t = torch.from_numpy(gt)
        perfect.update(t.double(), t, path.stem, boxes=boxes)
        moved = np.zeros_like(gt)
        moved[:, 200:] = gt[:, :-200]  # objects shifted far right: mostly misses
        shifted.update(torch.from_numpy(moved).double(), t, path.stem, boxes=boxes)
    assert perfect.results()["corloc"] == 100.0
    assert shifted.results()["corloc"] < 50.0
