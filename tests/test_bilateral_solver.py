"""The bilateral solver against the reference implementation's numpy/scipy build and solve of the
same system (tests/reference_bilateral_solver.py, which shares no code with segtricks.method.bilateral_solver),
and against a direct sparse solve of that system. The solver's CPU path (numpy grid) and CUDA path
(torch grid) are also checked against each other.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.sparse.linalg import spsolve

from helpers import require_shared
from reference_bilateral_solver import reference_bilateral_solve, reference_system
from segtricks.method.bilateral_solver import (BilateralGrid, SparseBilateralGrid, _solve, bilateral_solve,
                                        bilateral_solver_filter)


@pytest.fixture
def small_case():
    rng = np.random.default_rng(0)
    h, w = 40, 56
    im = np.zeros((h, w, 3))
    im[:, : w // 2] = (200, 40, 40)  # two colour regions with an edge, plus noise
    im[:, w // 2:] = (30, 90, 220)
    im = np.clip(im + rng.normal(0, 12, im.shape), 0, 255)
    target = (np.arange(w)[None, :] > w // 2 - 6).astype(float) * np.ones((h, 1))
    target = np.clip(target + rng.normal(0, 0.2, target.shape), 0, 1)
    return im, target


def test_converged_solution_equals_direct_sparse_solve(small_case):
    im, target = small_case
    a, b, s, _ = reference_system(im, target)
    direct = s.T @ spsolve(a, b)
    ours = bilateral_solve(torch.from_numpy(target), torch.from_numpy(im).permute(2, 0, 1),
                           cg_iterations=2000, cg_tol=1e-12)
    np.testing.assert_allclose(ours.numpy().reshape(-1), direct, atol=1e-6)


def test_25_iterations_match_scipy_pcg(small_case):
    im, target = small_case
    ours = bilateral_solve(torch.from_numpy(target), torch.from_numpy(im).permute(2, 0, 1))
    np.testing.assert_allclose(ours.numpy(), reference_bilateral_solve(im, target), atol=1e-6)


def test_sod300_images_match_the_reference_to_rounding():
    """The golden-style case: SOD photographs at 320², their DSS maps as soft masks, 25 iterations.
    Real photographs have pixels whose luma or chroma lies exactly on a bin boundary; they must land
    in the reference's bin (a summation order other than the reference's moved three of them in the
    first image, which changed the output by 5e-4)."""
    root = require_shared("sod300")
    for path in sorted((root / "images").glob("*.jpg"))[:4]:
        im = np.asarray(Image.open(path).convert("RGB").resize((320, 320), Image.BILINEAR)).astype(float)
        soft = Image.open(root / "maps" / "DSS" / f"{path.stem}.png").convert("L").resize((320, 320), Image.BILINEAR)
        target = np.asarray(soft) / 255.0
        ours = bilateral_solve(torch.from_numpy(target), torch.from_numpy(im).permute(2, 0, 1))
        np.testing.assert_allclose(ours.numpy(), reference_bilateral_solve(im, target), atol=1e-5, err_msg=path.name)


def test_torch_grid_path_equals_numpy_grid_path(small_case):
    """The torch grid (used for CUDA tensors) and the numpy grid (CPU) give the same vertices, blur and
    solution; run on CPU tensors here, on an image without pixels on bin boundaries."""
    im, target = small_case
    image = np.ascontiguousarray(im.transpose(2, 0, 1))
    sparse = SparseBilateralGrid.from_image(image, 16, 16, 8)
    dense = BilateralGrid.from_image(torch.from_numpy(image), 16, 16, 8)
    np.testing.assert_array_equal(dense.vertex_of_pixel.numpy(), sparse.vertex_of_pixel)
    y = np.random.default_rng(1).random(len(sparse.counts))
    np.testing.assert_allclose(dense.blur(torch.from_numpy(y)).numpy(), sparse.blur(y), rtol=1e-12)
    params = dict(lam=256, cg_iterations=25, cg_tol=1e-5, confidence=0.999, a_diag_min=1e-5)
    via_torch = dense.slice(_solve(dense, torch.from_numpy(target).reshape(-1), **params)).numpy()
    ours = bilateral_solve(torch.from_numpy(target), torch.from_numpy(image))
    np.testing.assert_allclose(ours.numpy().reshape(-1), via_torch, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(small_case):
    im, target = small_case
    mask = torch.from_numpy(target).float()[None, None]
    image = torch.from_numpy(im / 255).permute(2, 0, 1).float()[None]
    on_cuda = bilateral_solver_filter(mask.cuda(), image.cuda())
    assert on_cuda.is_cuda
    torch.testing.assert_close(on_cuda.cpu(), bilateral_solver_filter(mask, image), atol=1e-5, rtol=0)


def test_cpu_path_leaves_the_torch_thread_count_alone(small_case):
    im, target = small_case
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bilateral_solver_filter(torch.from_numpy(target).float()[None, None],
                                torch.from_numpy(im / 255).permute(2, 0, 1).float()[None])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_smooths_noise_within_regions_and_keeps_the_colour_edge(small_case):
    im, target = small_case
    mask = torch.from_numpy(target).float()[None, None]
    image = torch.from_numpy(im / 255).permute(2, 0, 1).float()[None]
    out = bilateral_solver_filter(mask, image)[0, 0].numpy()
    assert out.shape == target.shape and out.min() >= 0 and out.max() <= 1
    # noise within each colour region shrinks
    assert out[:, :20].std() < 0.5 * target[:, :20].std()
    # the output follows the colour edge at w/2, not the target's edge 6 pixels left of it
    assert out[:, 24:27].mean() < 0.3 and out[:, 30:].mean() > 0.7
