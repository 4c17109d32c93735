"""DINOv2 and DINOv3 backbones (issue 32): official layouts, strict loading, registers out of the feature grid,
and keys equal to those of the authors' own code at several sizes.

The reference keys in ``tests/data/modern_keys.npz`` were computed by facebookresearch/dinov2's and
facebookresearch/dinov3's public code (``hub/backbones.py``: ``dinov2_vits14``, ``dinov2_vits14_reg``,
``dinov3_vits16``, ``pretrained=False``), run once outside this repository: each model loaded
``official_checkpoint(name)`` with ``strict=True``; the last block's keys read from a hook on
``blocks[-1].attn.qkv`` (DINOv3's masked-bias linear), and for DINOv3 also after ``attn.apply_rope``;
patch tokens only, projected on ``PROJECTION``; the CLS attention row from the same q and k at 224².
The checkpoints and images are drawn from this file's own generators.
"""
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from segtricks.models.backbones import BACKBONES, RopeKeyBackbone, build_backbone
from segtricks.models.weights import LAYOUTS, RELEASES, CheckpointMismatchError

REFERENCE = Path(__file__).parent / "data" / "modern_keys.npz"
MODERN = ("dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16")
SIZES = {"dinov2_vits14": [(224, 224), (518, 518), (322, 476), (476, 322)],
         "dinov2_vits14_reg": [(224, 224), (518, 518), (322, 476), (476, 322)],
         "dinov3_vits16": [(224, 224), (320, 480), (480, 320)]}
ATTENTION_SIZE = (224, 224)
PROJECTION = torch.randn(384, 3, generator=torch.Generator().manual_seed(7)) / 384 ** 0.5


def official_checkpoint(name: str) -> Dict[str, torch.Tensor]:
    """A state dict in the release's own layout (every key the authors' model holds): weights N(0, 0.02²),
    biases N(0, 0.01²) (DINOv3's masked key bias too: the mask must remove it), norm scales and layer scales
    1 + N(0, 0.1²), and for DINOv2 a smooth positional field over the 37 × 37 pretrained grid."""
    vit = build_backbone(name, "random-init").vit
    template = LAYOUTS[RELEASES[name].layout].write(vit.state_dict(), vit)
    g = torch.Generator().manual_seed(32 + len(name))
    state = {}
    for key in sorted(template):
        shape = template[key].shape
        noise = torch.randn(shape, generator=g)
        if key.endswith("bias_mask") or key == "rope_embed.periods":
            state[key] = template[key].clone()
        elif ("norm" in key and key.endswith("weight")) or key.endswith("gamma"):
            state[key] = 1 + 0.1 * noise
        else:
            state[key] = (0.01 if key.endswith("bias") else 0.02) * noise
    if "pos_embed" in state:
        side, dim = 37, 384
        freqs, phase = torch.rand(2, dim, generator=g) * 1.5, torch.rand(dim, generator=g) * 6.2832
        y, x = torch.meshgrid(torch.arange(side) / side, torch.arange(side) / side, indexing="ij")
        field = 0.42 * torch.sin(6.2832 * (freqs[0] * y[..., None] + freqs[1] * x[..., None]) + phase)
        state["pos_embed"] = torch.cat([0.02 * torch.randn(1, 1, dim, generator=g),
                                        field.reshape(1, side * side, dim)], 1)
    return state


def image(h: int, w: int) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


def checkpoint_file(name: str, folder: Path) -> Path:
    path = folder / RELEASES[name].file_name
    torch.save(official_checkpoint(name), path)
    return path


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing")
    return np.load(REFERENCE)


@pytest.mark.parametrize("name", MODERN)
def test_keys_equal_the_authors_own_at_every_size(name, reference, tmp_path):
    backbone = build_backbone(name, str(checkpoint_file(name, tmp_path)))
    for h, w in SIZES[name]:
        with torch.no_grad():
            keys, attention = backbone.keys_and_attention(image(h, w))
        ours = (keys.flatten(2).transpose(1, 2)[0] @ PROJECTION).numpy()
        np.testing.assert_allclose(ours, reference[f"{name}_{h}x{w}"], atol=2e-5, rtol=0,
                                   err_msg=f"{name} at {h}×{w}")
        if (h, w) == ATTENTION_SIZE:
            np.testing.assert_allclose(attention[0].numpy(), reference[f"{name}_attention"], atol=1e-6, rtol=1e-4)


def test_dinov3_keys_after_rope_are_the_rotated_keys_and_differ_from_before(reference, tmp_path):
    """The switch is applied: after-rotation keys equal DINOv3's rotated keys, and they are not the
    before-rotation keys (which the default returns)."""
    backbone = build_backbone("dinov3_vits16", str(checkpoint_file("dinov3_vits16", tmp_path)), rope_keys="after")
    assert backbone.features == "last-block keys after RoPE"
    for h, w in SIZES["dinov3_vits16"]:
        with torch.no_grad():
            ours = (backbone(image(h, w)).flatten(2).transpose(1, 2)[0] @ PROJECTION).numpy()
        np.testing.assert_allclose(ours, reference[f"dinov3_vits16_{h}x{w}_after_rope"], atol=2e-5, rtol=0)
        assert np.abs(ours - reference[f"dinov3_vits16_{h}x{w}"]).max() > 1e-2


def test_rope_keys_is_refused_on_a_backbone_without_rope():
    with pytest.raises(ValueError, match="has no RoPE.*dinov3_vits16"):
        build_backbone("dinov2_vits14", "random-init", rope_keys="after")


@pytest.mark.parametrize("name", MODERN)
def test_the_official_layout_loads_with_every_key_and_one_renamed_key_is_refused(name, tmp_path):
    state = official_checkpoint(name)
    torch.save(state, tmp_path / "ok.pth")
    backbone = build_backbone(name, str(tmp_path / "ok.pth"))
    assert backbone.weights_id.startswith("sha256:")
    renamed = dict(state)
    renamed["blocks.3.attn.proj.weightx"] = renamed.pop("blocks.3.attn.proj.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointMismatchError, match="missing from it.*blocks.3.attn.proj.weight"):
        build_backbone(name, str(tmp_path / "renamed.pth"))


def test_a_dinov3_file_with_an_unmasked_key_bias_or_other_periods_is_refused(tmp_path):
    state = official_checkpoint("dinov3_vits16")
    unmasked = dict(state, **{"blocks.0.attn.qkv.bias_mask": torch.ones(3 * 384)})
    torch.save(unmasked, tmp_path / "unmasked.pth")
    with pytest.raises(CheckpointMismatchError, match="non-zero key bias"):
        build_backbone("dinov3_vits16", str(tmp_path / "unmasked.pth"))
    torch.save(dict(state, **{"rope_embed.periods": state["rope_embed.periods"] * 2}), tmp_path / "periods.pth")
    with pytest.raises(CheckpointMismatchError, match="RoPE periods"):
        build_backbone("dinov3_vits16", str(tmp_path / "periods.pth"))


@pytest.mark.parametrize("name", MODERN)
def test_registers_are_not_in_the_feature_grid(name):
    """Keys have the documented shape, and the grid is the patch tokens: perturbing the register tokens
    moves every key (they attend to them) but the grid keeps its H/p × W/p cells; were the registers kept,
    the token count would not reshape to the grid, and the first cells would be register keys."""
    backbone = build_backbone(name, "random-init")
    registers = BACKBONES.attributes(name)["registers"]
    assert backbone.vit.num_prefix_tokens == 1 + registers
    x = torch.randn(1, 3, 4 * backbone.patch_size, 5 * backbone.patch_size)
    with torch.no_grad():
        keys = backbone(x)
        assert keys.shape == (1, 384, 4, 5)
        tokens, rope = backbone._tokens_before_last_block(x)
        _, _, all_keys = backbone._queries_and_keys(backbone.vit.blocks[-1], tokens, rope)
    assert all_keys.shape[1] == 1 + registers + 20
    torch.testing.assert_close(keys.flatten(2).transpose(1, 2), all_keys[:, 1 + registers:])


def test_gated_dinov3_weights_name_the_licence_form_and_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTRICKS_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    from segtricks.models.weights import WeightsNotFoundError
    with pytest.raises(WeightsNotFoundError) as err:
        build_backbone("dinov3_vits16")
    message = str(err.value)
    assert "gated by a licence form" in message and "ai.meta.com" in message and "DINOv3 License" in message
    assert "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message


def test_rope_backbone_is_the_only_one_marked_rope():
    assert [n for n in BACKBONES.names() if BACKBONES.attributes(n)["rope"]] == ["dinov3_vits16"]
    assert isinstance(build_backbone("dinov3_vits16", "random-init"), RopeKeyBackbone)


def test_the_modern_grid_has_every_backbone_and_trick_and_tokencut_at_cuvlers_tau():
    from segtricks.config.grid import read_grid
    grid = read_grid("modern")
    configs = dict(grid.configs)
    assert len(configs) == 15
    for backbone, name, size in (("dinov2_s14", "dinov2_vits14", 322), ("dinov2_s14_reg", "dinov2_vits14_reg", 322),
                                 ("dinov3_s16", "dinov3_vits16", 320)):
        for cell, tricks in (("baseline", []), ("crop", ["crop"]), ("gf", ["gf"]), ("crop+gf", ["crop", "gf"])):
            cfg = configs[f"{backbone}/{cell}"]
            assert (cfg.backbone.name, cfg.data.image_size, cfg.tricks, cfg.method) == (name, size, tricks, "sempart")
            assert cfg.data.image_size % BACKBONES.attributes(name)["patch"] == 0
        tokencut = configs[f"{backbone}/tokencut"]
        assert (tokencut.method, tokencut.tokencut.tau, tokencut.backbone.name) == ("tokencut", 0.15, name)
    assert grid.table.published == {} and "no published values" in grid.table.title
    assert len(grid.table.contrasts) == 12


def test_the_modern_grid_dry_run_and_estimate_price_every_cell(in_tmp, capsys, monkeypatch):
    """The estimate's plumbing for every cell (measurements faked: at the grid's shapes a CPU needs
    minutes per workload; ``python -m segtricks.ablate --grid modern --dry-run --estimate`` measures them)."""
    from segtricks.ablate import main
    from segtricks.estimate import cost
    from segtricks.estimate.measure import PredictionCost, Timing, TrainCost
    monkeypatch.setenv("SEGTRICKS_MEASUREMENTS", str(in_tmp.parent / "measurements.json"))
    monkeypatch.setenv("SEGTRICKS_OFFLINE", "1")
    seen = []
    monkeypatch.setattr(cost, "measure_training", lambda cfg, *a: seen.append(cfg.backbone.name) or
                        TrainCost(Timing(2.0, 2.0, 2.0, 1), 2 ** 30, 10 ** 7))
    monkeypatch.setattr(cost, "measure_prediction", lambda cfg, *a: PredictionCost(
        Timing(0.5, 0.5, 0.5, 1), Timing(0.1, 0.1, 0.1, 1), 2 ** 29))
    monkeypatch.setattr(cost, "measure_post", lambda *a, **k: Timing(0.01, 0.01, 0.01, 1))
    monkeypatch.setattr(cost, "measure_metrics", lambda *a, **k: Timing(0.01, 0.01, 0.01, 1))
    monkeypatch.setattr(cost, "measure_method", lambda cfg, *a: seen.append(cfg.backbone.name) or Timing(0.3, 0.3, 0.3, 1))
    assert main(["--grid", "modern", "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    table = out.split("estimate on cpu")[1].split("assumptions:")[0]
    for backbone in ("dinov2_s14", "dinov2_s14_reg", "dinov3_s16"):
        for cell in ("baseline", "crop", "gf", "crop+gf", "tokencut"):
            assert f"  {backbone}/{cell} " in table, f"{backbone}/{cell}"
    assert {"dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"} <= set(seen)
    assert "gated by a licence form" in out  # DINOv3's weights: where to ask for them


def test_rope_keys_on_a_backbone_without_rope_is_refused_before_anything_runs(in_tmp, capsys):
    from segtricks.ablate import main
    from segtricks.config.schema import config_from_dict, config_hash, ConfigError
    assert main(["--grid", "modern", "--dry-run", "--set", "backbone.rope_keys=after"]) != 0
    err = capsys.readouterr().err
    assert "--set backbone.rope_keys=after: backbone.rope_keys applies to a backbone with RoPE (dinov3_vits16)" in err
    assert "'dinov2_vits14' has absolute positions" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="backbone.rope_keys"):
        config_from_dict({"backbone": {"name": "dinov3_vits16", "rope_keys": "sideways"}})
    before = config_from_dict({"backbone": {"name": "dinov3_vits16"}})
    after = config_from_dict({"backbone": {"name": "dinov3_vits16", "rope_keys": "after"}})
    assert config_hash(before) == config_hash(config_from_dict({"backbone": {"name": "dinov3_vits16"}}))
    assert config_hash(before) != config_hash(after)
