"""SelfMask against its authors' own modules (``tests/data/selfmask_golden.npz``: NoelShin/selfmask's
``TransformerDecoder``, ``MLP``, ``MaskFormer.forward``, ``Loss`` and ``Poly`` run on small random inputs by
a scratch script, with their weights), and on hand-computed cases."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segtricks.methods.selfmask import (SelfMaskHead, dice_losses, poly_factor, ranking_loss,
                                        selfmask_terms)

GOLDEN = Path(__file__).parent / "data" / "selfmask_golden.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def authors_head(golden) -> SelfMaskHead:
    dim, heads, hidden, queries, layers = (int(v) for v in golden["dims"])
    assert hidden == 4 * dim
    head = SelfMaskHead(nn.Module(), dim, heads, queries, layers)  # no encoder: the tokens are given
    head.load_state_dict({k[len("state."):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith("state.")})
    return head


def test_masks_and_objectness_equal_the_authors_maskformer(golden):
    head = authors_head(golden)
    h, w = golden["grid"]
    tokens = torch.from_numpy(golden["tokens"])
    with torch.no_grad():
        out = head(tokens.reshape(*tokens.shape[:2], int(h), int(w)))
    np.testing.assert_allclose(out["masks"].numpy(), golden["masks"], atol=1e-6)
    np.testing.assert_allclose(out["objectness"].numpy(), golden["objectness"][..., 0], atol=1e-6)


@pytest.mark.parametrize("layer", ["decoder.layers.0.multihead_attn.in_proj_weight", "ffn.layers.2.bias", "query_embed"])
def test_the_parity_check_sees_each_part(golden, layer):
    head = authors_head(golden)
    with torch.no_grad():
        dict(head.named_parameters())[layer].add_(0.01)
        h, w = golden["grid"]
        tokens = torch.from_numpy(golden["tokens"])
        out = head(tokens.reshape(*tokens.shape[:2], int(h), int(w)))
    moved = max(np.abs(out["masks"].numpy() - golden["masks"]).max(),
                np.abs(out["objectness"].numpy() - golden["objectness"][..., 0]).max())
    assert moved > 1e-4


def test_the_loss_as_written_equals_the_authors_criterion(golden):
    """Dice over every query and layer plus the ranking loss with the authors' sign, / the batch."""
    terms = selfmask_terms(torch.from_numpy(golden["masks"]), torch.from_numpy(golden["objectness"][..., 0]),
                           torch.from_numpy(golden["gt"][:, 0]), "as_written")
    assert terms["dice"].item() == pytest.approx(float(golden["dice"]), rel=1e-5)
    assert terms["ranking"].item() == pytest.approx(float(golden["ranking"]), rel=1e-4)
    assert (terms["dice"] + terms["ranking"]).item() == pytest.approx(float(golden["loss"]), rel=1e-5)


@pytest.mark.parametrize("grid", ["3x5", "4x4", "2x8", "6x7"])
def test_positions_are_interpolated_as_selfmasks_vit_does(golden, grid):
    """Bicubic to the exact size, and the embeddings as they are whenever the count matches (2 × 8 on a
    4 × 4 grid too: SelfMask's quirk, which DINO's rule does not share)."""
    from segtricks.models.positions import dino_pos_embed, selfmask_pos_embed
    rows, cols = (int(v) for v in grid.split("x"))
    pos = torch.from_numpy(golden["pos_embed"])
    ours = selfmask_pos_embed(pos, rows, cols)
    np.testing.assert_allclose(ours.numpy(), golden[f"pos_{grid}"], atol=1e-6)
    if grid == "2x8":
        assert not torch.equal(dino_pos_embed(pos, rows, cols), ours)


def test_the_ranking_rule_and_the_decoder_shape_are_part_of_the_training_but_not_other_methods_keys():
    from segtricks.config.schema import config_from_dict
    from segtricks.engine.training import training_hash
    base = {"method": "selfmask", "backbone": {"name": "demo_vit4"}}
    h = training_hash(config_from_dict(base))
    for section in ({"selfmask": {"ranking": "as_written"}}, {"selfmask": {"queries": 10}}):
        assert training_hash(config_from_dict({**base, **section})) != h
    assert training_hash(config_from_dict({**base, "found": {"lr_step": 5}})) == h


def test_dice_by_hand():
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # query 0: 1 − (2·2 + 1)/(2 + 2 + 1) = 0; query 1: 1 − (2·0.5 + 1)/(1 + 2 + 1) = 0.5
    assert torch.allclose(dice_losses(masks, target), torch.tensor([0.0, 0.5]))


def test_ranking_on_two_queries_argmax_lifts_the_best_and_as_written_the_worst():
    """Query 0 fits the target better (Dice loss .2 against .8) but scores lower (.3 against .6). The
    default rule penalises that by .3, and its gradient raises query 0 and lowers query 1, so that
    inference (argmax objectness) would pick query 0; the authors' order sees no violation there, and
    penalises the opposite order."""
    dice = torch.tensor([0.2, 0.8])
    wrong = torch.tensor([0.3, 0.6], requires_grad=True)
    loss = ranking_loss(wrong, dice, "argmax")
    loss.backward()
    assert loss.item() == pytest.approx(0.3) and wrong.grad.tolist() == [-1.0, 1.0]
    assert ranking_loss(torch.tensor([0.3, 0.6]), dice, "as_written").item() == 0.0
    right = torch.tensor([0.6, 0.3])
    assert ranking_loss(right, dice, "argmax").item() == 0.0
    assert ranking_loss(right, dice, "as_written").item() == pytest.approx(0.3)


def test_images_with_empty_targets_are_left_out():
    torch.manual_seed(0)
    masks, objectness = torch.rand(2, 2, 3, 4, 4), torch.rand(2, 2, 3)
    targets = torch.zeros(2, 8, 8, dtype=torch.bool)
    targets[0, 2:6, 2:6] = True
    both = selfmask_terms(masks, objectness, targets, "argmax")
    first = selfmask_terms(masks[:1], objectness[:1], targets[:1], "argmax")
    assert torch.equal(both["dice"], first["dice"]) and torch.equal(both["ranking"], first["ranking"])
    none = selfmask_terms(masks, objectness, torch.zeros_like(targets), "argmax")
    assert none["dice"].item() == 0 and none["dice"].requires_grad is False  # no graph from plain tensors


def test_the_rate_is_the_authors_poly_with_its_wrapping_and_double_step(golden):
    lrs = golden["lrs"]  # Poly(n_epochs=3, n_iters_per_epoch=7), get_lr() twice per step as trainer.py calls it
    ours = [6e-6 * poly_factor(step, 7, 3) for step in range(len(lrs))]
    np.testing.assert_allclose(ours, lrs, rtol=1e-12)
    paper = [poly_factor(step, 1320, 12) for step in range(1320 * 12)]  # DUTS-TR at batch 8, 12 epochs
    # T takes the odd values 1 … 1319 (two calls a step, an even epoch): the factor stays in [0.925, 1]
    assert min(paper) == pytest.approx((1 - 1319 / (12 * 1320)) ** 0.9) and max(paper) == 1.0


def test_parameter_counts_at_the_papers_shape():
    """ViT-S/8 (384-d, 6 heads), 20 queries, 6 layers. Per decoder layer: two attentions of 4·384² + 4·384
    (591,360 each), the FFN 384·1536 + 1536 + 1536·384 + 384 (1,181,568), three norms (2,304): 2,366,592;
    × 6, the final norm (768), the queries (20·384 = 7,680), the objectness MLP (2·(384² + 384) + 385 =
    296,065): 14,504,065 beside the encoder's 21,670,272 (DINO ViT-S/8, all fine-tuned)."""
    from segtricks.methods.selfmask import SelfMaskModel
    from segtricks.models.backbones import build_backbone
    model = SelfMaskModel(build_backbone("dino_vits8", "random-init"), queries=20, layers=6)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.head.decoder.layers[0]) == 2_366_592
    assert count(model.head) - count(model.head.encoder) == 14_504_065
    assert count(model.head.encoder) == 21_670_272
    assert all(p.requires_grad for p in model.head.parameters())
    assert {id(p) for p in model.backbone.parameters()} <= {id(p) for p in model.head.parameters()}


def test_forward_at_224_and_predict_at_a_non_square_size():
    from segtricks.config.schema import config_from_dict
    from segtricks.methods.selfmask import SelfMask, SelfMaskRecipe
    cfg = config_from_dict({"method": "selfmask", "backbone": {"name": "demo_vit4", "weights": "random-init"},
                            "data": {"image_size": 224, "resize_short": 224},
                            "selfmask": {"queries": 4, "decoder_layers": 2}})
    torch.manual_seed(0)
    model = SelfMaskRecipe().build_model(cfg)
    out = model(torch.rand(2, 3, 224, 224))
    assert out["masks"].shape == (2, 2, 4, 112, 112) and out["objectness"].shape == (2, 2, 4)  # 56 tokens × 2
    assert 0 <= out["masks"].min() and out["masks"].max() <= 1
    prediction = SelfMask(cfg, model).predict(torch.rand(3, 37, 50), "saliency")
    assert prediction.mask.shape == (37, 50) and set(np.unique(prediction.mask)) <= {0.0, 1.0}
    assert 0 <= prediction.box[0] < prediction.box[2] <= 50 and 0 <= prediction.box[1] < prediction.box[3] <= 37


def test_training_view_pads_scales_and_is_reproducible():
    from PIL import Image
    from segtricks.data.datasets import Sample
    from segtricks.data.views import SelfMaskTrainView

    class One:
        def __len__(self):
            return 1

        def load(self, i):
            mask = np.zeros((30, 40), bool)
            mask[5:25, 10:30] = True
            return Sample("a", Image.fromarray(np.full((30, 40, 3), 200, np.uint8)), mask)

        def item_id(self, i):
            return "a"

    view = SelfMaskTrainView(One(), 56, (0.5, 0.5))
    image, mask = view[(0, 3)]
    again, mask_again = view[(0, 3)]
    assert torch.equal(image, again) and torch.equal(mask, mask_again)
    assert image.shape == (3, 56, 56) and mask.shape == (56, 56) and mask.dtype == torch.bool
    assert not mask[28:].any() and not mask[:, 28:].any()  # scaled to 28², padded with 0 at the bottom and right
    assert 0.2 < mask.float().mean() * 4 < 0.45  # the object's third of the image, at the scale
    images, masks = SelfMaskTrainView.collate([view[(0, 1)], None, view[(0, 2)]])
    assert images.shape == (2, 3, 56, 56) and masks.shape == (2, 56, 56)
    class NoMask(One):
        def load(self, i):
            return Sample("a", Image.fromarray(np.zeros((30, 40, 3), np.uint8)))
    with pytest.raises(Exception, match="no mask; SelfMask trains on masks"):
        SelfMaskTrainView(NoMask(), 56)[(0, 0)]


@pytest.mark.slow
def test_a_selfmask_cell_trains_on_a_folders_masks_is_scored_and_segments(tmp_path, monkeypatch, capsys):
    """SelfMask in a grid on the demo backbone, trained on a ``folder`` of images and masks (the synthetic
    test images written out, standing in for pseudo-masks): a FINISHED run, the two terms logged, the
    fine-tuned encoder in the checkpoint (its weights differ from the backbone it started from), scored
    per image, and ``segment`` on the cell's run writes a mask per image."""
    from PIL import Image
    from helpers import DEMO_CELL, grid_runs, pngs_of, random_photos
    from segtricks import segment
    from segtricks.ablate import main as ablate
    from segtricks.data.datasets import DATASETS
    from segtricks.config.schema import DatasetRef
    from segtricks.engine import checkpoint
    from segtricks.models.backbones import build_backbone
    pseudo = tmp_path / "pseudo"
    (pseudo / "images").mkdir(parents=True)
    (pseudo / "masks").mkdir()
    raw = DATASETS.get("synthetic")(DatasetRef("synthetic", None, "val", 12, "raise"))
    for i in range(len(raw)):
        sample = raw.load(i)
        sample.image.save(pseudo / "images" / f"{sample.id}.png")
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(pseudo / "masks" / f"{sample.id}.png")
    grid = tmp_path / "s.yaml"
    grid.write_text(f"""name: s
base: {DEMO_CELL}
set:
  method: selfmask
  tricks: []
  data.val: null
  data.train: {{name: folder, root: {pseudo}}}
  optim: {{epochs: 1, steps_per_epoch: 3, batch_size: 4, lr: 1.0e-4, weight_decay: 0.01}}
  selfmask: {{queries: 4, decoder_layers: 2}}
  eval: [{{name: synthetic, split: test, limit: 4}}]
axes:
  ranking:
    - {{name: argmax, set: {{selfmask.ranking: argmax}}}}
""")
    monkeypatch.chdir(tmp_path)
    assert ablate(["--grid", str(grid)]) == 0
    client, runs = grid_runs(tmp_path, "s")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for r in runs:
        assert r.data.tags["role"] == "train" and r.data.metrics["synthetic.n_images"] == 4
        assert r.data.metrics["train.dice"] > 0 and "train.ranking" in r.data.metrics
    trained = checkpoint.load(next((tmp_path / "outputs").rglob("last.pt")))["head"]
    start = build_backbone("demo_vit4", "random-init").vit.state_dict()
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.equal(trained[f"encoder.{qkv}"], start[qkv])  # the encoder was fine-tuned and saved
    images = random_photos(tmp_path / "images", [(40, 30), (23, 57)])
    capsys.readouterr()
    assert segment.main(["--run", runs[0].info.run_id, "--images", str(images), "--out", str(tmp_path / "m")]) == 0
    masks = pngs_of(tmp_path / "m")
    assert [m.shape for m in masks.values()] == [(30, 40), (57, 23)]
