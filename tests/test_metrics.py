"""Metrics against independent truth: published SOD scores, pysodmetrics, hand-built cases."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import require_shared
from segtricks.data.datasets import boxes_from_mask
from segtricks.evaluation.metrics import SaliencyEvaluator, box_iou, corloc_hit, largest_component_box
from segtricks.config.vocabulary import METRICS, SALIENCY_METRICS


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


def pysodmetrics_scores(pairs):
    """pysodmetrics on 0–255 maps with its default data preparation (per-map min–max rescaling)."""
    psm = pytest.importorskip("py_sod_metrics", reason="pysodmetrics is the second implementation")
    with warnings.catch_warnings():  # Fmeasure (deprecated for FmeasureV2) is the one with the PR curves
        warnings.simplefilter("ignore")
        fm = psm.Fmeasure(beta=0.3)
    mae, sm, em = psm.MAE(), psm.Smeasure(), psm.Emeasure()
    for _, pred, gt in pairs:
        g = gt.astype(np.uint8) * 255
        for metric in (fm, mae, sm, em):
            metric.step(pred, g)
    f, curve = fm.get_results(), em.get_results()["em"]["curve"]
    p, r = f["pr"]["p"], f["pr"]["r"]
    classic = np.where(p + r > 0, 1.3 * p * r / np.maximum(0.3 * p + r, 1e-300), 0).max()
    return {"max_fbeta_pr_curve": classic, "mean_fbeta_adaptive": f["fm"]["adp"], "mae": mae.get_results()["mae"],
            "s_measure": sm.get_results()["sm"], "max_e_measure": curve.max(), "mean_e_measure": curve.mean()}


def ours_on(pairs):
    ev = SaliencyEvaluator()
    for image_id, pred, gt in pairs:
        ev.update(torch.from_numpy(pred / 255.0), torch.from_numpy(gt), image_id)
    return ev.results()


TOOLBOX_TOLERANCE = {"max_fbeta_pr_curve": 1e-9, "mean_fbeta_adaptive": 1e-6, "mae": 1e-9, "s_measure": 1e-6,
                     "max_e_measure": 1e-6, "mean_e_measure": 1e-6}


def test_toolbox_protocols_equal_pysodmetrics_on_the_dss_maps(sod_dss, dss_results):
    theirs, ours = pysodmetrics_scores(sod_dss), dss_results.results()
    for name, tol in TOOLBOX_TOLERANCE.items():
        assert ours[name] == pytest.approx(theirs[name], abs=tol), name


def test_paper_max_fbeta_agrees_with_pysodmetrics_dynamic_f(sod_dss, dss_results):
    psm = pytest.importorskip("py_sod_metrics", reason="pysodmetrics is the second implementation")
    fm = psm.FmeasureV2(metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)})
    for _, pred, gt in sod_dss:
        fm.step(pred / 255.0, gt, normalize=False)  # the paper's protocol scores the map as it is
    # pysodmetrics thresholds at ≥ t, t = 0…255; the paper's protocol at > k/255, k = 0…254
    assert dss_results.results()["max_fbeta"] == pytest.approx(fm.get_results()["fm"]["dynamic"].max(), abs=1e-3)


@pytest.mark.parametrize("method,narrow", [
    ("DSS", lambda m: m * 0.7),                     # maximum 178: the map never reaches 255
    ("PiCANet", lambda m: np.minimum(m + 40, 255)),  # minimum 40: the background is never 0
    ("Amulet", lambda m: 30 + m * 0.5),             # both ends narrowed, non-integer levels
])
def test_toolbox_protocols_rescale_narrowed_maps_as_pysodmetrics(method, narrow):
    root = require_shared("sod300")
    pairs = [(mask.stem, narrow(load_gray(root / "maps" / method / mask.name).astype(np.float64)),
              load_gray(mask) > 128) for mask in sorted((root / "masks").glob("*.png"))]
    theirs, ours = pysodmetrics_scores(pairs), ours_on(pairs)
    for name, tol in TOOLBOX_TOLERANCE.items():
        assert ours[name] == pytest.approx(theirs[name], abs=tol), name
    # the paper's protocols score the map as predicted: narrowing the range changes them
    full = ours_on([(i, load_gray(root / "maps" / method / f"{i}.png").astype(np.float64), g) for i, _, g in pairs])
    assert abs(full["max_fbeta"] - ours["max_fbeta"]) > 1e-3 or abs(full["iou"] - ours["iou"]) > 1e-3


def test_a_constant_map_is_not_rescaled():
    gt = torch.zeros(6, 6, dtype=torch.bool)
    gt[:3] = True
    ev = SaliencyEvaluator()
    ev.update(torch.full((6, 6), 0.25, dtype=torch.float64), gt, "c")
    assert ev.results()["mae"] == pytest.approx((18 * 0.25 + 18 * 0.75) / 36)


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
    # MAE is a toolbox protocol: the map {0, 0.9} is rescaled to {0, 1} first, leaving the 2 FP pixels
    assert row["mae"] == pytest.approx(2 / 16)
    assert row["object_ratio"] == 0.25
    p, r = 4 / 6, 1.0
    f = 1.3 * p * r / (0.3 * p + r)
    assert ev.results()["max_fbeta"] == pytest.approx(f)


def test_results_are_named_as_the_vocabulary_names_the_metrics():
    """Every name a study, a table or the grid's summary reads (segtricks.config.vocabulary) is a key of
    results(), and results() reports nothing else but the counts."""
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:6, 2:6] = True
    full, quick = SaliencyEvaluator(with_structure=True), SaliencyEvaluator(with_structure=False)
    for ev in (full, quick):
        ev.update(gt * 0.8 + 0.1, gt, "boxed", boxes=np.array([[2, 2, 6, 6]]))
        ev.update(gt * 0.6, gt, "unboxed")
    assert set(full.results()) == set(METRICS) | {"n_images", "skipped"}
    assert set(quick.results()) == {n for n, m in METRICS.items() if not m.structure} | {"n_images", "skipped"}
    masks_only = SaliencyEvaluator()
    masks_only.update(gt * 0.8, gt, "a")
    assert set(masks_only.results()) == set(SALIENCY_METRICS) | {"n_images", "skipped"}


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


def test_the_e_measure_of_a_perfect_map_is_the_toolboxes_wh_over_wh_minus_1():
    """Issue 28: max_e_measure is 1.005 on a perfect all-foreground 200-pixel map. That is the definition
    (Fan et al.'s code and pysodmetrics divide by w·h − 1), kept so that published figures reproduce."""
    from py_sod_metrics import Emeasure
    for gt in (np.ones((10, 20), bool), np.pad(np.ones((4, 6), bool), 3)):
        ev = SaliencyEvaluator(with_structure=True)
        ev.update(gt.astype(np.float32), gt)
        em = Emeasure()
        em.step(pred=gt.astype(np.uint8) * 255, gt=gt.astype(np.uint8) * 255)
        assert ev.results()["max_e_measure"] == pytest.approx(gt.size / (gt.size - 1), abs=1e-9)
        assert ev.results()["max_e_measure"] == pytest.approx(em.get_results()["em"]["curve"].max(), abs=1e-9)
