"""Paired contrast statistics against scipy, simulated nulls and effects, and a hand-computed Holm."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.statistics import (MaxOfMeanCurve, MeanDifference, bca_interval, bootstrap_weights, holm,
                                 seed_interval, sign_flip_p)


def paired_scores(n, effect, sd, seed):
    """Per-image baseline scores and trick scores that differ from them by ``effect`` plus noise of SD ``sd``."""
    rng = np.random.default_rng(seed)
    baseline = rng.uniform(0.3, 0.9, n)
    return baseline + effect + rng.normal(0, sd, n), baseline


def mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def test_the_bca_interval_of_a_mean_difference_is_scipys():
    trick, baseline = paired_scores(400, 0.01, 0.15, seed=3)
    ours = bca_interval(MeanDifference(trick, baseline), seed=0)
    runs = [stats.bootstrap((trick, baseline), mean_diff, paired=True, vectorized=True, method="BCa",
                            n_resamples=9999, random_state=seed) for seed in range(3)]
    se = runs[0].standard_error
    for r in runs:  # the bounds of two bootstraps of 9999 resamples differ by a few hundredths of a standard error
        assert ours[0] == pytest.approx(r.confidence_interval.low, abs=0.1 * se)
        assert ours[1] == pytest.approx(r.confidence_interval.high, abs=0.1 * se)


def test_the_bca_interval_of_the_dataset_level_max_fbeta_is_scipys():
    rng = np.random.default_rng(1)
    trick = rng.random((80, 12))
    baseline = trick + rng.normal(0.02, 0.1, (80, 12))

    def max_of_mean(x, y, axis):  # scipy moves the image axis last: (thresholds, [resamples,] images)
        return x.mean(axis).max(0) - y.mean(axis).max(0)

    r = stats.bootstrap((trick, baseline), max_of_mean, paired=True, vectorized=True, axis=0, method="BCa",
                        n_resamples=9999, random_state=0)
    ours = bca_interval(MaxOfMeanCurve(trick, baseline), seed=0)
    assert ours[0] == pytest.approx(r.confidence_interval.low, abs=0.15 * r.standard_error)
    assert ours[1] == pytest.approx(r.confidence_interval.high, abs=0.15 * r.standard_error)


def test_a_resample_of_the_max_fbeta_equals_recomputing_it_on_those_images():
    rng = np.random.default_rng(2)
    trick, baseline = rng.random((50, 255)), rng.random((50, 255))
    stat = MaxOfMeanCurve(trick, baseline)
    weights = bootstrap_weights(50, 4, np.random.default_rng(0))
    for row, delta in zip(weights, stat.resampled(weights)):
        images = np.repeat(np.arange(50), row.astype(int))  # the resample as a list of images
        assert delta == pytest.approx(trick[images].mean(0).max() - baseline[images].mean(0).max(), abs=1e-12)
    signs = np.where(rng.random((3, 50)) < 0.5, -1.0, 1.0)
    for row, delta in zip(signs, stat.flipped(signs)):
        swapped_t = np.where(row[:, None] > 0, trick, baseline)
        swapped_b = np.where(row[:, None] > 0, baseline, trick)
        assert delta == pytest.approx(swapped_t.mean(0).max() - swapped_b.mean(0).max(), abs=1e-12)


@pytest.mark.parametrize("effect", [0.0, 0.03])
def test_the_sign_flip_p_value_is_scipys_paired_permutation_test(effect):
    trick, baseline = paired_scores(200, effect, 0.15, seed=5)
    ours = sign_flip_p(MeanDifference(trick, baseline), seed=0)
    theirs = stats.permutation_test((trick, baseline), mean_diff, permutation_type="samples", vectorized=True,
                                    n_resamples=9999, alternative="two-sided", random_state=0).pvalue
    mc = 4 * np.sqrt(2 * theirs * (1 - theirs) / 9999) + 2e-4  # two Monte-Carlo estimates of one p: 4 SD of their gap
    assert ours == pytest.approx(theirs, abs=mc)


@pytest.mark.slow
def test_the_type_one_error_rate_under_400_null_contrasts_is_five_percent():
    rejected = [sign_flip_p(MeanDifference(*paired_scores(300, 0.0, 0.15, seed=s)), permutations=999, seed=s) < 0.05
                for s in range(400)]
    assert 0.02 <= np.mean(rejected) <= 0.08


@pytest.mark.slow
def test_a_gain_of_one_hundredth_of_iou_over_5000_images_is_detected_in_95_percent_of_simulations():
    found = [sign_flip_p(MeanDifference(*paired_scores(5000, 0.01, 0.15, seed=1000 + s)), permutations=499,
                         seed=s) < 0.05 for s in range(100)]
    assert np.mean(found) >= 0.95


def test_holm_on_four_hand_computed_p_values():
    # sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 → .06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, np.nan])
    assert out[0] == pytest.approx(0.01) and np.isnan(out[1])  # a missing contrast counts for nothing


def test_the_seed_interval_is_a_t_interval_and_says_when_two_seeds_are_too_few():
    three = seed_interval([0.01, 0.02, 0.03])
    half = stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)
    assert (three.low, three.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert three.note is None
    two = seed_interval([0.01, 0.03])
    assert two.note.startswith("2 seeds: a between-seed interval needs at least 3 seeds")
    assert np.isnan(seed_interval([0.01]).low)


def test_the_logged_per_image_f_curves_give_back_the_dataset_level_max_fbeta():
    from segtricks.evaluation.metrics import SaliencyEvaluator
    rng = np.random.default_rng(0)
    images = []
    for i in range(150):  # more than one flush of 64
        gt = np.zeros((40, 50), bool)
        gt[rng.integers(0, 20):rng.integers(21, 40), rng.integers(0, 25):rng.integers(26, 50)] = True
        images.append((np.clip(gt * 0.6 + rng.random((40, 50)) * 0.5, 0, 1), gt))
    evaluator = SaliencyEvaluator(with_structure=False)
    for i, (pred, gt) in enumerate(images):
        evaluator.update(pred, gt, f"im{i}")
    ids, curves = evaluator.f_curves()
    assert ids == [f"im{i}" for i in range(150)] and curves.shape == (150, 255) and curves.dtype == np.float32
    assert curves.astype(np.float64).mean(0).max() == pytest.approx(evaluator.results()["max_fbeta"], abs=1e-6)
    # a bootstrap resample's statistic is the metric computed on those images from scratch
    weights = bootstrap_weights(150, 1, np.random.default_rng(1))
    resample = SaliencyEvaluator(with_structure=False)
    for i in np.repeat(np.arange(150), weights[0].astype(int)):
        resample.update(*images[i], f"im{i}")
    zero = np.zeros_like(curves)
    assert MaxOfMeanCurve(curves, zero).resampled(weights)[0] == pytest.approx(resample.results()["max_fbeta"],
                                                                                abs=1e-6)
