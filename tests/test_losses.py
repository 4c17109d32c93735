import math

import numpy as np
import pytest
import torch

from segtricks.method.losses import (coarse_fine_consistency, coarse_graph_tv, fine_graph_tv, ncut_loss,
                              thresholded_affinity)


def two_cluster_features(h=6, w=8):
    """Left half of the grid has feature e0, right half e1 (orthogonal): cos 1 within, 0 across."""
    f = torch.zeros(1, 2, h, w)
    f[:, 0, :, : w // 2] = 1
    f[:, 1, :, w // 2:] = 1
    truth = torch.zeros(1, 1, h, w)
    truth[..., w // 2:] = 1
    return f, truth


def test_affinity_is_one_above_tau_and_eps_below():
    f, _ = two_cluster_features()
    W = thresholded_affinity(f, tau=0.4, eps=1e-6)
    n = W.shape[-1]
    assert W.shape == (1, n, n)
    assert set(W.unique().tolist()) == {1e-6, 1.0} or torch.allclose(W.unique(), torch.tensor([1e-6, 1.0]))
    assert W.sum().item() == pytest.approx(2 * (n // 2) ** 2 + 2 * (n // 2) ** 2 * 1e-6, rel=1e-5)


def test_true_partition_has_the_lowest_ncut():
    f, truth = two_cluster_features()
    W = thresholded_affinity(f, 0.4, 1e-6)
    true_cut = ncut_loss(truth, W).item()
    # hand value: |A| = |B| = 24, cut = eps·24², assoc = 24² + eps·24² per side
    eps = 1e-6
    assert true_cut == pytest.approx(2 * eps / (1 + eps), abs=1e-5)
    torch.manual_seed(0)
    for _ in range(20):
        assert ncut_loss(torch.rand_like(truth), W).item() > true_cut + 0.3
    half_wrong = truth.clone()
    half_wrong[..., :3, :] = 1 - half_wrong[..., :3, :]  # top rows labelled the other way
    assert ncut_loss(half_wrong, W).item() > true_cut + 0.3
    # NCut is symmetric: swapping foreground and background costs the same
    assert ncut_loss(1 - truth, W).item() == pytest.approx(true_cut, abs=1e-5)


def numpy_graph_tv(mask, weight_of):
    """Independent loop version of SPEC §3: np.pad(mode="reflect"), every pixel, every direction."""
    b, _, h, w = mask.shape
    padded = np.pad(mask, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    total = 0.0
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if dy or dx:
                            q = padded[n, 0, y + 1 + dy, x + 1 + dx]
                            total += weight_of(n, y, x, dy, dx) * (mask[n, 0, y, x] - q) ** 2
    return total / (b * 8 * h * w)


def test_constant_mask_is_a_stationary_point():
    img = torch.randn(2, 3, 12, 10)
    for c in (0.0, 0.3, 1.0):
        for tv in (lambda s: fine_graph_tv(s, img, sigma=1.0), lambda s: coarse_graph_tv(s, img, 0.4, 1e-6)):
            s = torch.full((2, 1, 12, 10), c, requires_grad=True)
            value = tv(s)
            value.backward()
            assert value.item() == 0
            assert s.grad.abs().max().item() == 0  # squared differences: no pull away from a constant


def test_one_changed_corner_pixel_of_a_3x3_mask_by_hand():
    # Pixel (0,0) = a, the rest 0, flat image (every weight 1). Reflect padding of a 3-wide axis maps
    # −1 → 1 and 3 → 1, so index 0 is only ever reached directly. Directed terms with a difference:
    # (0,0)'s own 8 neighbours, all 0 → 8 terms; (0,1) via dx −1, (1,0) via dy −1, (1,1) via (−1,−1)
    # → 3 terms. Total 11 terms of a², mean over 1·8·3·3 = 72 terms.
    for a in (1.0, 0.5):
        mask = torch.zeros(1, 1, 3, 3)
        mask[0, 0, 0, 0] = a
        assert fine_graph_tv(mask, torch.zeros(1, 3, 3, 3), sigma=1.0).item() == pytest.approx(11 * a * a / 72)
    # With replicate padding (0,0) would be its own neighbour 3 times (5 terms, not 8): not the reference's.


def test_centre_pixel_of_a_3x3_mask_by_hand():
    # Centre = 1: its own 8 terms; each corner reaches the centre 4 times through the mirror, each
    # edge pixel 2 times → 8 + 4·4 + 4·2 = 32 of 72 terms.
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 1, 1] = 1
    assert fine_graph_tv(mask, torch.zeros(1, 3, 3, 3), sigma=1.0).item() == pytest.approx(32 / 72)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 3.0])
def test_fine_weight_is_exp_of_minus_d_over_sigma(sigma):
    # 4×4, mask and image both step between columns 1 and 2 (image +1 in all 3 channels: D_I = 3).
    # Crossing terms: column 1 with dx = +1 (3 per row), column 2 with dx = −1 (3 per row); the mirror
    # sends column 0's dx = −1 to column 1 and column 3's dx = +1 to column 2, neither crossing.
    # 6 · 4 rows = 24 of 8·16 = 128 terms, each exp(−3/σ).
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:] = 1
    image = torch.zeros(1, 3, 4, 4)
    image[..., 2:] = 1
    value = fine_graph_tv(mask, image, sigma=sigma).item()
    assert value == pytest.approx(24 * math.exp(-3 / sigma) / 128)
    assert value != pytest.approx(24 * math.exp(-3 / sigma ** 2) / 128)  # the σ² reading differs


def test_coarse_weights_on_two_cluster_features_by_hand():
    # 3×4 grid: columns 0–1 have feature e0, columns 2–3 e1 (cos 0 across ≤ τ → weight ε; cos 1 within).
    f = torch.zeros(1, 2, 3, 4)
    f[:, 0, :, :2] = 1
    f[:, 1, :, 2:] = 1
    eps = 1e-3
    # Mask on column 3 only, inside cluster e1: column 3 crosses to column 2 with dx = −1 (3) and,
    # mirrored, with dx = +1 (3); column 2 crosses with dx = +1 (3). 9 per row, 27 terms of weight 1.
    misaligned = torch.zeros(1, 1, 3, 4)
    misaligned[..., 3] = 1
    assert coarse_graph_tv(misaligned, f, 0.4, eps).item() == pytest.approx(27 / 96)
    # Mask on the cluster: only columns 1 ↔ 2 cross, 6 per row, 18 terms of weight ε.
    aligned = torch.zeros(1, 1, 3, 4)
    aligned[..., 2:] = 1
    assert coarse_graph_tv(aligned, f, 0.4, eps).item() == pytest.approx(18 * eps / 96)


def test_graph_tv_equals_an_independent_loop_implementation():
    g = torch.Generator().manual_seed(3)
    mask, image = torch.rand(2, 1, 5, 7, generator=g), torch.randn(2, 3, 5, 7, generator=g)
    feats = torch.randn(2, 6, 5, 7, generator=g)
    sigma, tau, eps = 1.7, 0.2, 1e-6
    img_pad = np.pad(image.numpy().astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    f = (feats / feats.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    f_pad = np.pad(f, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")

    def fine_w(n, y, x, dy, dx):
        return math.exp(-((img_pad[n, :, y + 1, x + 1] - img_pad[n, :, y + 1 + dy, x + 1 + dx]) ** 2).sum() / sigma)

    def coarse_w(n, y, x, dy, dx):
        return 1.0 if float(f_pad[n, :, y + 1, x + 1] @ f_pad[n, :, y + 1 + dy, x + 1 + dx]) > tau else eps

    m = mask.numpy().astype(np.float64)
    assert fine_graph_tv(mask, image, sigma).item() == pytest.approx(numpy_graph_tv(m, fine_w), rel=1e-5)
    assert coarse_graph_tv(mask, feats, tau, eps).item() == pytest.approx(numpy_graph_tv(m, coarse_w), rel=1e-5)


def test_fine_tv_is_cheaper_along_image_edges():
    h, w = 8, 8
    mask = torch.zeros(1, 1, h, w)
    mask[..., 4:] = 1
    aligned = torch.zeros(1, 3, h, w)
    aligned[..., 4:] = 2.0  # ‖ΔI‖² = 12 → weight e^-12
    assert fine_graph_tv(mask, aligned, 1.0) < 1e-3 * fine_graph_tv(mask, torch.zeros(1, 3, h, w), 1.0)


def test_coarse_tv_follows_feature_clusters():
    f, truth = two_cluster_features()
    shifted = torch.roll(truth, shifts=2, dims=-1)
    aligned = coarse_graph_tv(truth, f, 0.4, 1e-6).item()
    assert aligned < 1e-5
    assert coarse_graph_tv(shifted, f, 0.4, 1e-6).item() > 0.1


def test_consistency_by_hand():
    coarse = torch.full((1, 1, 4, 4), 0.5)
    assert coarse_fine_consistency(coarse, torch.full((1, 1, 32, 32), 0.5)).item() == 0
    assert coarse_fine_consistency(coarse, torch.full((1, 1, 32, 32), 0.8)).item() == pytest.approx(0.09)


def test_losses_are_differentiable():
    f, _ = two_cluster_features()
    s = torch.rand(1, 1, 6, 8, requires_grad=True)
    (ncut_loss(s, thresholded_affinity(f, 0.4, 1e-6)) + coarse_graph_tv(s, f, 0.4, 1e-6)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def all_loss_terms(mask, fine, feats, image):
    """Every loss of this module, and the crop trick's terms, on one set of masks and features."""
    from segtricks.method.crop_consistency import crop_consistency_terms

    crop = crop_consistency_terms(lambda x, fine_grad: {"coarse": mask, "fine": fine, "features": feats}, image.float(),
                                  fine, torch.tensor([[4, 8, 16], [0, 12, 20]]), 0.2, 1e-6, 2, 1e-3)
    return {"ncut": ncut_loss(mask, thresholded_affinity(feats, 0.2, 1e-6)),
            "fine_tv": fine_graph_tv(fine, image, 1.7),
            "coarse_tv": coarse_graph_tv(mask, feats, 0.2, 1e-6),
            "consistency": coarse_fine_consistency(mask, fine),
            **crop}


@pytest.mark.parametrize("inside_autocast", [False, True])
def test_losses_compute_in_float32_on_bfloat16_inputs(inside_autocast):
    """On bf16 masks, features and image (a model's outputs under autocast), each loss equals the
    float32 loss of the same values upcast, to 1e-6 relative, and is float32: the computation is in
    float32, also when called inside a CPU bf16 autocast region (whose matmuls would otherwise be bf16:
    the cosines compared with τ, and NCut's affinity products)."""
    g = torch.Generator().manual_seed(5)
    bf16 = [x.bfloat16() for x in (torch.rand(2, 1, 6, 8, generator=g), torch.rand(2, 1, 24, 32, generator=g),
                                   torch.randn(2, 16, 6, 8, generator=g), torch.randn(2, 3, 24, 32, generator=g))]
    expected = all_loss_terms(*[x.float() for x in bf16])
    affinity = thresholded_affinity(bf16[2].float(), 0.2, 1e-6).bfloat16()  # ε rounded to bf16
    expected["ncut_of_a_bf16_affinity"] = ncut_loss(bf16[0].float(), affinity.float())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inside_autocast):
        got = {**all_loss_terms(*bf16), "ncut_of_a_bf16_affinity": ncut_loss(bf16[0], affinity)}
    assert set(got) == set(expected)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=0,
                                   msg=lambda m: f"{name}: {m}")
