import hashlib

import pytest
import torch

from segtricks.errors import BadInput
from segtricks.models.backbones import BACKBONES, build_backbone
from segtricks.models.weights import CheckpointMismatchError, WeightsNotFoundError

torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name, "random-init") for name in BACKBONES.names()}


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("size", [(64, 64), (48, 96)])
def test_key_features_shape_for_any_divisible_size(backbones, name, size):
    bb = backbones[name]
    p = bb.patch_size
    h, w = (size[0] // p) * p or p, (size[1] // p) * p or p
    feats = bb(torch.randn(2, 3, h, w))
    assert feats.shape == (2, bb.embed_dim, h // p, w // p)
    assert not feats.requires_grad and bb.weights_id == "random-init"


def pretrained_input(bb):
    """A batch at the backbone's pretrained size (224², DINOv2's 518²): no positional interpolation there
    (timm's rule and DINO's differ elsewhere, see ``test_positional_embeddings.py``)."""
    return torch.randn(1, 3, *bb.vit.patch_embed.img_size)


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if not BACKBONES.attributes(n)["rope"]])
def test_features_are_the_last_blocks_attention_keys(backbones, name):
    """Independent route: a hook on timm's own forward captures qkv of the last block, CLS and registers
    dropped. (DINOv3's keys are checked against DINOv3's own code: ``test_modern_backbones.py``.)"""
    bb = backbones[name]
    captured = {}
    hook = bb.vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.update(qkv=o))
    x = pretrained_input(bb)
    with torch.no_grad():
        bb.vit.forward_features(x)
    hook.remove()
    qkv = captured["qkv"]  # (1, prefix + N, 3·C) for the N patches after CLS (and registers)
    prefix = BACKBONES.attributes(name)["registers"] + 1
    n = qkv.shape[1] - prefix
    heads = bb.vit.blocks[-1].attn.num_heads
    k = qkv.reshape(1, n + prefix, 3, heads, -1)[:, prefix:, 1].reshape(1, n, -1)  # keys of all heads
    if bb.rms is not None:  # the demo backbone rescales each token (directions, hence cosines, unchanged)
        k = k * bb.rms / k.pow(2).mean(-1, keepdim=True).sqrt()
    ours = bb(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, k)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_last_tokens_are_timms_normalised_output_tokens(backbones, name):
    """What SelfMask's decoder reads: timm's own ``forward_features`` (the final norm applied), CLS
    and registers dropped, at the pretrained size; and differentiable once the backbone is fine-tuned."""
    bb = backbones[name]
    x = pretrained_input(bb)
    with torch.no_grad():
        timm_tokens = bb.vit.forward_features(x)[:, bb.vit.num_prefix_tokens:]
        ours = bb.last_tokens(x)
    p = bb.patch_size
    assert ours.shape == (1, bb.embed_dim, x.shape[2] // p, x.shape[3] // p)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), timm_tokens)
    assert not bb.last_tokens(x).requires_grad  # frozen until a method fine-tunes it


def test_a_fine_tuned_backbone_passes_gradients_to_every_weight():
    bb = build_backbone("demo_vit4", "random-init").fine_tune()
    bb.last_tokens(torch.randn(1, 3, 16, 16)).sum().backward()
    assert bb.vit.blocks[0].attn.qkv.weight.grad is not None and bb.vit.patch_embed.proj.weight.grad is not None


def test_indivisible_image_size_is_an_error(backbones):
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        backbones["dino_vits16"](torch.randn(1, 3, 64, 72))


def test_frozen_backbone_stays_in_eval_mode(backbones):
    bb = backbones["demo_vit4"]
    bb.train()
    assert not bb.training and not bb.vit.training
    assert not any(p.requires_grad for p in bb.parameters())


def _same_features(a, b):
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def _perturbed(backbone):
    """A backbone whose weights differ from the (deterministic) random init, as trained ones do."""
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return backbone


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": {f"module.backbone.{k}": v for k, v in sd.items()}},  # iBOT-style
    lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 3},  # DINO training ckpt
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_checkpoint_layouts_load_and_are_identified_by_sha256(tmp_path, wrap):
    torch.manual_seed(1)
    src = _perturbed(build_backbone("demo_vit4", "random-init"))
    state = wrap(src.vit.state_dict())
    if isinstance(state, dict) and "teacher" in state:
        state["teacher"]["head.mlp.0.weight"] = torch.zeros(3)  # extra keys are fine
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    loaded = build_backbone("demo_vit4", str(path))
    _same_features(src, loaded)
    with pytest.raises(AssertionError):  # the load did something: random init differs
        _same_features(src, build_backbone("demo_vit4", "random-init"))
    assert loaded.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    other = build_backbone("dino_vits16", "random-init")
    path = tmp_path / "vits16.pth"
    torch.save(other.vit.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch.*another architecture"):
        build_backbone("demo_vit4", str(path))


def test_checkpoint_matching_no_key_is_an_error_not_a_silent_no_op(tmp_path):
    """The reference loaded iBOT with strict=False and an ignored key: nothing was loaded."""
    src = build_backbone("demo_vit4", "random-init")
    path = tmp_path / "encoder.pth"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in src.vit.state_dict().items()}}, path)
    with pytest.raises(CheckpointMismatchError, match="missing from it"):
        build_backbone("demo_vit4", str(path))


def test_missing_official_weights_name_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTRICKS_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        build_backbone("dino_vits8")
    msg = str(err.value)
    assert "dino_deitsmall8_pretrain.pth" in msg
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/" in msg
    assert str(tmp_path) in msg and "random-init" in msg
    with pytest.raises(WeightsNotFoundError, match="ibot_vits16/checkpoint_teacher.pth"):
        build_backbone("ibot_vits16")


def test_missing_explicit_weights_file_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("dino_vits16", str(tmp_path / "nope.pth"))


def test_official_file_is_found_under_segtricks_weights(tmp_path, monkeypatch):
    torch.manual_seed(3)
    src = _perturbed(build_backbone("dino_vits16", "random-init"))
    torch.save(src.vit.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    monkeypatch.setenv("SEGTRICKS_WEIGHTS", str(tmp_path))
    loaded = build_backbone("dino_vits16")
    _same_features(src, loaded)
    assert loaded.weights_id.startswith("sha256:")


def test_random_init_names_one_set_of_weights():
    """Reloading a random-init run must rebuild the backbone it trained on, whatever the global RNG."""
    torch.manual_seed(123)
    a = build_backbone("demo_vit4", "random-init")
    torch.rand(10)
    b = build_backbone("demo_vit4", "random-init")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", ["dino_vits16", "ibot_vits16"])
def test_official_or_random_init_takes_the_official_file_when_present_and_never_downloads(tmp_path, monkeypatch, name):
    from segtricks.models.backbones import write_random_release
    from segtricks.models.weights import OFFICIAL_OR_RANDOM, RELEASES, find_weights
    monkeypatch.delenv("SEGTRICKS_OFFLINE")  # online: the fallback must still not try a download
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setenv("SEGTRICKS_WEIGHTS", str(tmp_path))
    assert find_weights(name, OFFICIAL_OR_RANDOM) is None
    assert build_backbone(name, OFFICIAL_OR_RANDOM).weights_id == "random-init"
    path = write_random_release(name, tmp_path)
    assert path == tmp_path / RELEASES[name].file_name  # the official name and place
    state = torch.load(path, weights_only=True)
    if name == "ibot_vits16":  # iBOT's layout: the teacher's prefixed keys under state_dict, beside its head
        assert set(state) == {"state_dict"} and "backbone.pos_embed" in state["state_dict"]
    else:  # DINO's: the ViT's own key names at the top level
        assert "pos_embed" in state and "blocks.11.attn.qkv.weight" in state
    loaded = build_backbone(name, OFFICIAL_OR_RANDOM)
    assert loaded.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    _same_features(loaded, build_backbone(name, "random-init"))  # random-init weights, loaded from the file


def test_weights_and_checkpoint_errors_are_bad_input_with_their_builtin_bases():
    assert issubclass(WeightsNotFoundError, BadInput) and issubclass(WeightsNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointMismatchError, BadInput) and issubclass(CheckpointMismatchError, ValueError)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_each_backbones_declared_architecture_is_the_built_ones(name, backbones):
    """The registry's attributes (what the estimate and the methods read without building) are the truth."""
    declared = BACKBONES.attributes(name)
    bb = backbones[name]
    assert (declared["patch"], declared["dim"], declared["depth"]) == (bb.patch_size, bb.embed_dim, len(bb.vit.blocks))
