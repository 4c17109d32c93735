import copy

import pytest
import torch
import torch.nn.functional as F

from segtricks.models.head import SempartHead

# Hand count of SPEC §2 (in_dim 384, dim 64, 2 layers, 2 heads × 64, MLP 64):
#   proj 384·64+64 = 24,640
#   per layer: LN 128 + qkv 64·384 = 24,576 + out 128·64+64 = 8,256 + LN 128 + MLP 2·(64·64+64) = 8,320
#              = 41,408; two layers = 82,816
#   coarse 64+1 = 65
#   conv3×3+BN: 67→192 = 115,968+384; 195→128 = 224,768+256; 131→128 = 151,040+256; 128→128 = 147,584+256
#   fine 131+1 = 132
PROJ, ENCODER, COARSE, FINE = 24_640, 82_816, 65, 132
STAGE_67_192, STAGE_195_128, STAGE_131_128, STAGE_128_128 = 116_352, 225_024, 151_296, 147_840


@pytest.mark.parametrize("patch,expected", [
    (8, PROJ + ENCODER + COARSE + STAGE_67_192 + STAGE_195_128 + STAGE_131_128 + STAGE_128_128 + FINE),
    (16, PROJ + ENCODER + COARSE + STAGE_67_192 + STAGE_195_128 + 2 * STAGE_131_128 + STAGE_128_128 + FINE),
    (14, PROJ + ENCODER + COARSE + STAGE_67_192 + STAGE_195_128 + 2 * STAGE_131_128 + STAGE_128_128 + FINE),
])
def test_trainable_parameter_count(patch, expected):
    """Patch 14 (DINOv2) has ⌈log2 14⌉ = 4 stages, as 16: the same layers."""
    head = SempartHead(384, patch)
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == expected
    assert expected == {8: 748_165, 14: 899_461, 16: 899_461}[patch]


@pytest.mark.parametrize("patch,size", [(8, (320, 320)), (16, (320, 320)), (14, (322, 322)), (14, (224, 322))])
def test_output_shapes_and_ranges(patch, size):
    """The fine mask at the exact input size, for patch 14 too (whose last stage is ×1.75)."""
    head = SempartHead(384, patch)
    grid = (size[0] // patch, size[1] // patch)
    out = head(torch.randn(2, 384, *grid), torch.randn(2, 3, *size))
    assert out["coarse"].shape == (2, 1, *grid)
    assert out["fine"].shape == (2, 1, *size)
    for v in out.values():
        assert v.min() >= 0 and v.max() <= 1


@pytest.mark.parametrize("patch,channels_in", [(8, [67, 195, 131, 128]), (16, [67, 195, 131, 131, 128])])
def test_architecture_details(patch, channels_in):
    head = SempartHead(384, patch)
    layer = head.encoder[0]
    assert layer.attn.to_qkv.bias is None and layer.attn.to_out.bias is not None
    # the last stage's second 128→128 block exists for every patch size (SPEC §2)
    assert [s[0].in_channels for s in head.up] + [head.refine[0].in_channels] == channels_in
    assert head.fine.in_channels == 131
    assert not hasattr(head, "final_norm")
    with pytest.raises(ValueError, match="at least 2 pixels"):
        SempartHead(384, 1)


def saved_full_resolution_planes(run, size, batch=2):
    """Channel planes of size×size float32 per image in the distinct storages autograd saves for
    backward during ``run()``: the head's full-resolution activation memory."""
    saved = []

    def pack(t):
        saved.append(t.detach())  # detached: no reference cycle through grad_fn
        return saved[-1]

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    storages = {t.untyped_storage().data_ptr(): t for t in saved if t.shape[-2:] == (size, size)}
    return sum(t.untyped_storage().nbytes() for t in storages.values()) / (batch * size * size * 4), out


def test_full_resolution_activations_held_for_backward():
    """Per image, the /8 head keeps 775 full-resolution planes for backward: the last stage's input
    (131), its conv and activation outputs (128 + 128), the second block's (128 + 128), the fine
    conv's input (131) and the fine mask (1). It kept 903: with an out-of-place LeakyReLU the last
    stage's BatchNorm output was kept beside its activation, which the second block's conv saves."""
    torch.manual_seed(0)
    head = SempartHead(16, 8)
    planes, _ = saved_full_resolution_planes(lambda: head(torch.randn(2, 16, 4, 4), torch.randn(2, 3, 32, 32)), 32)
    assert planes == 131 + 128 + 128 + 128 + 128 + 131 + 1


def out_of_place_forward(head, features, image):
    """SPEC §2 written plainly (every activation out of place, the image concatenated as it is): the
    head's memory-saving forward must give exactly these numbers."""
    x = head.proj(features)
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    for layer in head.encoder:
        tokens = layer(tokens)
    x = tokens.transpose(1, 2).reshape(b, c, h, w)
    coarse = torch.sigmoid(head.coarse(x))
    for block in [*head.up, head.refine]:
        if block is not head.refine:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = torch.cat([x, F.interpolate(image, size=x.shape[-2:], mode="bilinear", align_corners=False)], 1)
        x = F.leaky_relu(block[1](block[0](x)), 0.01)
    return {"coarse": coarse, "fine": torch.sigmoid(head.fine(torch.cat([x, image], 1)))}


@pytest.mark.parametrize("autocast", [False, True])
def test_memory_saving_forward_gives_the_same_numbers(autocast):
    """Outputs, gradients and BatchNorm statistics equal bit for bit those of the plain forward, in
    float32 and under bf16 autocast (where the image is concatenated in bf16, not promoted)."""
    torch.manual_seed(0)
    head = SempartHead(16, 8)
    plain = copy.deepcopy(head)
    features, image = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 32, 32)

    def step(h, forward):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = forward(h, features, image)
        (out["fine"].float().square().mean() + out["coarse"].float().mean()).backward()
        return [out["fine"], out["coarse"]] + [p.grad for p in h.parameters()] + list(h.buffers())

    for a, b in zip(step(head, SempartHead.forward), step(plain, out_of_place_forward)):
        assert torch.equal(a, b)


def test_fine_without_graph_has_the_same_values_and_statistics():
    """``fine_grad=False``: the same masks and BatchNorm updates, a coarse mask with gradient, a fine
    mask without, and nothing at full resolution kept for backward."""
    torch.manual_seed(0)
    head = SempartHead(16, 8)
    other = copy.deepcopy(head)
    features, image = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 32, 32)
    planes, out = saved_full_resolution_planes(lambda: head(features, image, fine_grad=False), 32)
    ref = other(features, image)
    assert planes == 0
    assert out["coarse"].requires_grad and not out["fine"].requires_grad
    for k in ("coarse", "fine"):
        assert torch.equal(out[k], ref[k])
    for a, b in zip(head.buffers(), other.buffers()):
        assert torch.equal(a, b)
    with torch.no_grad():  # never turns gradients on inside a no_grad region
        assert not head(features, image)["fine"].requires_grad


def test_a_power_of_two_patch_upsamples_by_two_at_every_stage():
    """The last stage's resize to the input size is a ×2 for p = 8: the paper's head. A hook sees each
    stage's input at twice the previous size."""
    head = SempartHead(384, 8)
    sizes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for stage in head.up]
    head(torch.randn(1, 384, 5, 7), torch.randn(1, 3, 40, 56))
    for h in hooks:
        h.remove()
    assert sizes == [(10, 14), (20, 28), (40, 56)]
    head14 = SempartHead(384, 14)
    sizes.clear()
    hooks = [stage.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for stage in head14.up]
    head14(torch.randn(1, 384, 5, 7), torch.randn(1, 3, 70, 98))
    assert sizes == [(10, 14), (20, 28), (40, 56), (70, 98)]

