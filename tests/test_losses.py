import pytest
import torch

from segtricks.losses import (coarse_fine_consistency, coarse_graph_tv, fine_graph_tv, ncut_loss,
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


def test_constant_mask_has_zero_tv():
    img = torch.randn(2, 3, 12, 10)
    for c in (0.0, 0.3, 1.0):
        assert fine_graph_tv(torch.full((2, 1, 12, 10), c), img, sigma=1.0).item() == 0
        assert coarse_graph_tv(torch.full((2, 1, 12, 10), c), img, 0.4, 1e-6).item() == 0


def test_tv_of_a_vertical_step_on_a_flat_image_by_hand():
    h, w = 7, 10
    mask = torch.zeros(1, 1, h, w)
    mask[..., 4:] = 1
    # crossing edges: right h, down 0, down-right h−1, down-left h−1, each of weight 1
    expected = (h + 2 * (h - 1)) / (h * w)
    assert fine_graph_tv(mask, torch.zeros(1, 3, h, w), sigma=1.0).item() == pytest.approx(expected)


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
