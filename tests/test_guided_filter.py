import numpy as np
import pytest
import torch

from helpers import require_shared
from segtricks.method.guided_filter import box_mean, guided_filter, guided_filter_gray

cv2 = pytest.importorskip("cv2", reason="opencv-contrib-python-headless is the reference (test extra)")


def brute_box_mean(x: np.ndarray, r: int) -> np.ndarray:
    h, w = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].mean()
    return out


def test_box_mean_uses_truncated_windows():
    x = np.random.default_rng(0).random((9, 13))
    ours = box_mean(torch.from_numpy(x)[None, None], 2)[0, 0].numpy()
    np.testing.assert_allclose(ours, brute_box_mean(x, 2), atol=1e-12)


def test_matches_opencv_on_real_images():
    """cv2.ximgproc.guidedFilter on SOD images; compared outside a 2r border (OpenCV pads)."""
    root = require_shared("sod300")
    assert hasattr(cv2, "ximgproc"), "install opencv-contrib-python-headless (cv2.ximgproc)"
    radius, eps, border = 9, 1e-3, 18
    rng = np.random.default_rng(0)
    files = sorted((root / "images").glob("*.jpg"))[:12]
    worst = 0.0
    for path in files:
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
        gt = cv2.imread(str(root / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        mask = np.clip(cv2.GaussianBlur(gt, (0, 0), 4) + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
        ref = cv2.ximgproc.guidedFilter(img.mean(-1), mask, radius, eps)
        ours = guided_filter(torch.from_numpy(mask)[None, None], torch.from_numpy(img).permute(2, 0, 1)[None],
                             radius, eps)[0, 0].numpy()
        worst = max(worst, float(np.abs(ours - ref)[border:-border, border:-border].max()))
    assert worst <= 1e-4, worst


def test_batched_equals_one_by_one_and_constant_passes_through():
    torch.manual_seed(0)
    masks, images = torch.rand(3, 1, 40, 50), torch.rand(3, 3, 40, 50)
    batched = guided_filter(masks, images, 4, 1e-2)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], guided_filter(masks[i:i + 1], images[i:i + 1], 4, 1e-2))
    flat = guided_filter(torch.full((1, 1, 40, 50), 0.7), images[:1], 4, 1e-2)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.7), atol=1e-4, rtol=0)


def test_edge_preserving_smoothing():
    """Noise on flat regions is removed; a step that coincides with an image edge survives."""
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1
    step = (image[:, :1] > 0.5).float()
    noisy = step + 0.2 * torch.randn_like(step)
    out = guided_filter(noisy, image, 4, 1e-3)
    assert (out - step).abs().mean() < 0.3 * (noisy - step).abs().mean()
    assert out[..., 15].mean() < 0.25 and out[..., 16].mean() > 0.75


def test_gray_filter_follows_he_et_al_on_a_hand_case():
    # guide = src: a = var/(var+eps), the output approaches the input as eps → 0
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(guided_filter_gray(x, x, 2, 1e-9), x, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu():
    masks, images = torch.rand(2, 1, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(guided_filter(masks.cuda(), images.cuda()).cpu(), guided_filter(masks, images),
                               atol=1e-4, rtol=0)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        guided_filter(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 9))


@pytest.mark.parametrize("shape,radius", [((40, 50), 9), ((20, 21), 9), ((19, 22), 9), ((10, 20), 9), ((5, 7), 9)])
def test_box_mean_at_every_size_against_brute_force(shape, radius):
    """Both paths: images of at least 2r+2 pixels (window differences written in place) and smaller
    ones, where one window can reach both borders (clamped indices)."""
    x = np.random.default_rng(1).random(shape)
    ours = box_mean(torch.from_numpy(x)[None, None], radius)[0, 0].numpy()
    np.testing.assert_allclose(ours, brute_box_mean(x, radius), atol=1e-12)


def brute_guided_filter(p: np.ndarray, guide: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s equations in float64 on brute-force truncated box means: the independent truth."""
    mean_i, mean_p = brute_box_mean(guide, r), brute_box_mean(p, r)
    a = (brute_box_mean(guide * p, r) - mean_i * mean_p) / (brute_box_mean(guide * guide, r) - mean_i ** 2 + eps)
    b = mean_p - a * mean_i
    return brute_box_mean(a, r) * guide + brute_box_mean(b, r)


def test_float32_filter_equals_a_float64_brute_force_filter_to_1e5():
    rng = np.random.default_rng(2)
    image, mask = rng.random((3, 44, 52)), rng.random((44, 52))
    ours = guided_filter(torch.from_numpy(mask).float()[None, None], torch.from_numpy(image).float()[None],
                         9, 1e-3)[0, 0].double().numpy()
    np.testing.assert_allclose(ours, brute_guided_filter(mask, image.mean(0), 9, 1e-3), atol=1e-5, rtol=0)


def test_gradients_flow_through_the_filter_and_equal_the_no_grad_output():
    """With grad the box sums take the concatenating path (autograd cannot see through out=)."""
    x = torch.rand(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
    guide = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        plain = guided_filter_gray(x, guide, 4, 1e-3)
    torch.testing.assert_close(guided_filter_gray(x, guide, 4, 1e-3).detach(), plain)
    assert torch.autograd.gradcheck(lambda m: guided_filter_gray(m, guide, 4, 1e-3), (x,))


@pytest.mark.parametrize("shape", [(3, 41, 57), (2, 10, 12), (1, 320, 320)])
def test_the_opencv_path_equals_the_torch_path(shape):
    """CPU without autograd filters with cv2.boxFilter + numpy; with autograd (or on CUDA) with torch ops."""
    b, h, w = shape
    masks, images = torch.rand(b, 1, h, w), torch.rand(b, 3, h, w)
    fast = guided_filter(masks, images, 9, 1e-3)
    masks.requires_grad_(True)  # takes the torch path
    torch.testing.assert_close(fast, guided_filter(masks, images, 9, 1e-3).detach(), atol=2e-5, rtol=0)
