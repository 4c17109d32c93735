import pytest
import torch

from segtricks.head import SempartHead

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
])
def test_trainable_parameter_count(patch, expected):
    head = SempartHead(384, patch)
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == expected
    assert expected == {8: 748_165, 16: 899_461}[patch]


@pytest.mark.parametrize("patch", [8, 16])
def test_output_shapes_and_ranges(patch):
    head = SempartHead(384, patch)
    grid = 320 // patch
    out = head(torch.randn(2, 384, grid, grid), torch.randn(2, 3, 320, 320))
    assert out["coarse"].shape == (2, 1, grid, grid)
    assert out["fine"].shape == (2, 1, 320, 320)
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
    with pytest.raises(ValueError, match="power of two"):
        SempartHead(384, 14)
