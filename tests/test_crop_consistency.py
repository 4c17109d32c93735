import pytest
import torch
import torch.nn.functional as F

from segtricks.method.crop_consistency import crop_and_resize, crop_consistency_terms, sample_crop_boxes
from segtricks.method.guided_filter import guided_filter
from segtricks.models.head import SempartHead


def test_window_positions_cover_the_valid_range_uniformly():
    """The reference's crops were always at row 80: this test fails on that bug."""
    size, frac, draws = 40, 0.5, 20_000
    boxes = sample_crop_boxes(draws, size, frac, torch.Generator().manual_seed(0))
    side = 20
    assert (boxes[:, 2] == side).all()
    for axis in (0, 1):
        counts = torch.bincount(boxes[:, axis], minlength=size - side + 1)
        assert counts.numel() == size - side + 1  # nothing beyond the last valid position
        expected = draws / (size - side + 1)
        assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected
    assert boxes[:, 0].float().std() > 5  # rows vary, not a fixed offset


@pytest.mark.parametrize("frac", [0.0, 1.5])
def test_invalid_fraction_is_an_error(frac):
    with pytest.raises(ValueError, match="crop.frac"):
        sample_crop_boxes(1, 32, frac)


def test_crop_and_resize_cuts_the_window():
    quadrants = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    x = torch.stack([quadrants, quadrants])[:, None]  # (2, 1, 8, 8)
    out = crop_and_resize(x, torch.tensor([[4, 0, 4], [0, 4, 4]]))  # bottom-left, top-right
    assert out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out[0], torch.full((1, 8, 8), 3.0))
    torch.testing.assert_close(out[1], torch.full((1, 8, 8), 2.0))
    torch.testing.assert_close(crop_and_resize(x, torch.tensor([[0, 0, 8], [0, 0, 8]])), x)


class TinyModel(torch.nn.Module):
    """Features = a fixed random projection of the image (8×8 patches); a real Sempart head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(3, 16, 8, stride=8).requires_grad_(False)
        self.head = SempartHead(16, 8).eval()  # eval: BatchNorm must not mix batches here

    def forward(self, x, fine_grad=True):
        f = self.embed(x)
        return {**self.head(f, x, fine_grad=fine_grad), "features": f}


def test_no_gradient_reaches_the_teacher():
    """Gradients of L_eq equal those with the teacher replaced by a precomputed constant."""
    model = TinyModel()
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[4, 8, 16], [0, 16, 16]])

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.head.parameters() if p.grad is not None]

    student = model(images)["fine"]
    ours = grads(crop_consistency_terms(model, images, student, boxes, 0.4, 1e-6, 2, 1e-3)["crop_eq"])

    crops = crop_and_resize(images, boxes)
    with torch.no_grad():
        constant = guided_filter(model(crops)["fine"], crops, 2, 1e-3).clamp(0, 1)
    student = model(images)["fine"]
    detached = grads(F.mse_loss(crop_and_resize(student, boxes), constant))
    for a, b in zip(ours, detached):
        torch.testing.assert_close(a, b)

    # the check can fail: without stop-gradient the teacher branch adds gradient
    student = model(images)["fine"]
    live_teacher = guided_filter(model(crops)["fine"], crops, 2, 1e-3).clamp(0, 1)
    coupled = grads(F.mse_loss(crop_and_resize(student, boxes), live_teacher))
    assert any(not torch.allclose(a, b) for a, b in zip(ours, coupled))


def test_crop_ncut_term_has_gradient():
    model = TinyModel()
    images = torch.rand(2, 3, 32, 32)
    terms = crop_consistency_terms(model, images, model(images)["fine"],
                                   sample_crop_boxes(2, 32, 0.5), 0.4, 1e-6, 2, 1e-3)
    assert set(terms) == {"crop_ncut", "crop_eq"}
    assert terms["crop_ncut"].requires_grad and torch.isfinite(terms["crop_ncut"])


def test_crop_forward_keeps_only_the_coarse_branch_for_backward():
    """The crop's fine mask is only the (detached) teacher: its forward saves nothing at full
    resolution for backward, where it used to build a second full-resolution graph."""
    model = TinyModel().train()
    images = torch.rand(2, 3, 32, 32)
    shapes = []

    def predict(x, fine_grad=True):
        def pack(t):
            shapes.append(t.shape)
            return t.detach()

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return model(x, fine_grad=fine_grad)

    terms = crop_consistency_terms(predict, images, model(images)["fine"], sample_crop_boxes(2, 32, 0.5),
                                   0.4, 1e-6, 2, 1e-3)
    assert shapes and not [s for s in shapes if s[-2:] == (32, 32)]
    assert terms["crop_ncut"].requires_grad
