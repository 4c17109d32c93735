"""The paper's other systems against their authors' own outputs (``../shared/golden/baselines.npz``: TokenCut's
``ncut``, LOST's ``lost`` and FOUND's ``compute_img_bkg_seg`` run on six structured inputs), through
every eigensolver, and on hand-made cases where the golden file has none (Deep Spectral)."""
import numpy as np
import pytest
import torch

from helpers import REPO, grid_runs
from segtricks.methods.deep_spectral import localisation_box, minority_positive, patch_mask
from segtricks.methods.lost import lost
from segtricks.methods.patches import largest_component, patch_box
from segtricks.methods.tokencut import ncut

CASES = range(6)
REPO_EXPERIMENTS = REPO / "experiments"


def case(baselines, i):
    keys = torch.from_numpy(baselines[f"case{i}_keys"][0, 1:])  # CLS dropped, as the authors' functions drop it
    return keys, tuple(baselines[f"case{i}_grid_hw"]), int(baselines[f"case{i}_patch"]), tuple(baselines[f"case{i}_image_hw"])


@pytest.mark.parametrize("solver", ["dense", "arpack", "torch"])
@pytest.mark.parametrize("i", CASES)
def test_tokencut_equals_the_authors_ncut(baselines, i, solver):
    keys, grid, patch, image_hw = case(baselines, i)
    cut = ncut(keys, grid, tau=0.2, eps=1e-5, solver=solver)
    theirs = baselines[f"case{i}_tokencut_eigvec"]
    # both are normalised vᵀDv = 1 and sign-aligned by the seed rule: equal up to the solver's precision
    assert np.abs(cut.eigenvector - theirs).max() <= 1e-4, np.abs(cut.eigenvector - theirs).max()
    # the seed is argmax |v|, and on a binary graph every patch of the object has the same |v| (57 to 190
    # patches tie to 1e-9 here): which of them argmax returns follows the last bits of the solver's rounding.
    # The authors' seed is one of ours, and ours lies in their mask: the same component either way.
    ties = np.flatnonzero(np.abs(cut.eigenvector).ravel() > np.abs(cut.eigenvector).max() - 1e-9)
    assert baselines[f"case{i}_tokencut_seed"] in ties and cut.seed in ties
    assert np.array_equal(cut.mask, baselines[f"case{i}_tokencut_mask"].astype(bool))
    assert np.array_equal(patch_box(cut.mask, patch, image_hw), baselines[f"case{i}_tokencut_box"])


@pytest.mark.parametrize("solver", ["dense", "arpack", "torch"])
def test_tokencut_on_a_complete_graph_takes_the_whole_image(solver):
    # every cosine above τ: the second eigenvalue has multiplicity N − 1 and the authors' answer is
    # whichever vector the solver's rounding gives; here it is the whole grid, every time
    keys = torch.ones(6 * 8, 16) + 0.01 * torch.randn(6 * 8, 16, generator=torch.Generator().manual_seed(0))
    cut = ncut(keys, (6, 8), tau=0.2, eps=1e-5, solver=solver)
    assert cut.mask.all() and cut.mask.shape == (6, 8)
    # one cosine at or below τ and the graph has a cut again: the eigenvector decides
    keys[0] = -keys[0]
    assert not ncut(keys, (6, 8), tau=0.2, eps=1e-5, solver=solver).mask.all()


@pytest.mark.parametrize("i", CASES)
def test_lost_equals_the_authors_lost(baselines, i):
    keys, grid, patch, image_hw = case(baselines, i)
    found = lost(keys, grid, k_patches=100)
    assert np.array_equal(found.degree, baselines[f"case{i}_lost_degree"])
    if baselines[f"case{i}_lost_min_degree_ties"] == 1:  # with ties the seed is the sort's: compare only the set
        assert found.seed == baselines[f"case{i}_lost_seed"]
        assert np.array_equal(patch_box(found.mask, patch, image_hw), baselines[f"case{i}_lost_box"])
    else:
        assert found.degree[found.seed] == found.degree.min()


def two_clusters(grid=(6, 8), minority=((1, 1), (1, 2), (2, 1), (2, 2), (4, 6)), seed=0):
    """Keys of two directions on a grid: ``minority`` patches on one, the rest on the other, with noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.zeros(16), torch.zeros(16)
    a[0], b[1] = 1.0, 1.0
    keys = torch.stack([b] * (grid[0] * grid[1])) + 0.05 * torch.randn(grid[0] * grid[1], 16, generator=g)
    for r, c in minority:
        keys[r * grid[1] + c] = a + 0.05 * torch.randn(16, generator=g)
    return keys


def test_deep_spectral_takes_the_minority_side_whatever_the_solver():
    keys = two_clusters()
    expected = np.zeros((6, 8), bool)
    for r, c in ((1, 1), (1, 2), (2, 1), (2, 2), (4, 6)):
        expected[r, c] = True
    for solver in ("dense", "arpack", "torch"):
        assert np.array_equal(patch_mask(keys, (6, 8), solver), expected), solver
    assert np.array_equal(minority_positive(np.array([1.0, 2, -1])), [-1.0, -2, 1])  # 2 of 3 positive: flipped
    assert np.array_equal(minority_positive(np.array([1.0, 1])), [1.0, 1])  # all positive: kept (the rule's < 1)


def test_deep_spectrals_box_is_of_the_largest_8_connected_component():
    """A diagonal pair is one component at 8-connectivity and two at 4: the box differs."""
    mask = np.zeros((6, 8), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # a diagonal of 3: one 8-component, three 4-components
    mask[0, 6] = mask[0, 7] = True  # a horizontal pair: the largest 4-component
    assert np.array_equal(localisation_box(mask, 16, (96, 128), 8), [16, 16, 64, 64])
    assert np.array_equal(localisation_box(mask, 16, (96, 128), 4), [96, 0, 128, 16])
    assert np.array_equal(localisation_box(np.zeros((6, 8), bool), 16, (90, 120), 8), [0, 0, 120, 90])
    assert largest_component(mask, 8).sum() == 3


def test_a_method_cell_is_refused_with_a_training_trick_a_reference_protocol_or_maps(tmp_path, capsys):
    """One line naming the file and the key, before anything runs; an unknown method lists the known ones;
    a training size that is not a multiple of the backbone's patch, whatever the method."""
    from segtricks.ablate import main as ablate
    from helpers import write_grid
    cases = {
        "{name: a, set: {method: tokencut, tricks: [crop]}}": "method 'tokencut' does not train, so training trick 'crop'",
        "{name: a, set: {method: lost, tricks: [], eval_protocols: [ours, reference]}}":
            "method 'lost' is scored under ours only",
        "{name: a, set: {method: deep_spectral, tricks: [], maps: maps/x}}":
            "maps: scores precomputed maps, and method 'deep_spectral'",
        "{name: a, set: {method: selfmask, tricks: [crop, gf]}}": "method 'selfmask' trains a model without the "
                                                                 "coarse and fine masks that training trick 'crop'",
        "{name: a, set: {method: found, data.image_size: 58}}": "data.image_size 58 is not a multiple of the patch "
                                                               "size 4 of backbone 'demo_vit4'; use 56 or 60",
        "{name: a, set: {data.image_size: 58}}": "data.image_size 58 is not a multiple of the patch size 4",
        "{name: a, set: {method: tokenkut}}": "unknown method 'tokenkut'; registered methods: deep_spectral, found, "
                                             "lost, selfmask, sempart, tokencut",
    }
    for entry, said in cases.items():
        grid = write_grid(tmp_path, [entry])
        assert ablate(["--grid", str(grid), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err and str(grid) in err, err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_every_method_runs_end_to_end_on_real_photos_with_gf_and_bf(tmp_path, monkeypatch, capsys):
    """Random-init ViT-S/16 (the methods' backbone) on two SOD photos at their own sizes: each method
    scores a mask per image at the image's size, with GF and BF, and the table shows it beside Sempart's
    literature row."""
    from helpers import require_shared
    from segtricks.ablate import main as ablate
    from analysis.make_tables import main as make_tables
    sod = require_shared("sod300")
    grid = tmp_path / "m.yaml"
    grid.write_text(f"""name: m
base: {REPO_EXPERIMENTS / 'base.yaml'}
set:
  backbone: {{name: dino_vits16, weights: random-init}}
  eval: [{{name: folder, root: {sod}, split: test, limit: 2}}]
axes:
  method:
    - {{name: tokencut, set: {{method: tokencut}}}}
    - {{name: lost, set: {{method: lost}}}}
    - {{name: deep_spectral, set: {{method: deep_spectral}}}}
  post:
    - {{name: none, set: {{tricks: []}}}}
    - {{name: gf, set: {{tricks: [gf]}}}}
    - {{name: bf, set: {{tricks: [bf]}}}}
table:
  title: methods on photos
  datasets: [folder]
  metrics: [iou, max_fbeta]
  literature:
    Sempart: [.5, .6]
""")
    monkeypatch.chdir(tmp_path)
    assert ablate(["--grid", str(grid)]) == 0
    client, runs = grid_runs(tmp_path, "m")
    assert len(runs) == 9 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert r.data.tags["weights"] == "random-init" and r.data.tags["precision"] == "fp32"
        assert 0 <= r.data.metrics["folder.iou"] <= 1 and r.data.metrics["folder.n_images"] == 2
        assert "role" not in r.data.tags  # nothing trained
    by = {r.data.tags["cell"]: r.data.metrics["folder.iou"] for r in runs}
    for name in ("tokencut", "lost", "deep_spectral"):  # post-processing changes the masks
        assert by[f"{name}/gf"] != by[f"{name}/none"] and by[f"{name}/bf"] != by[f"{name}/none"]
    records = client.download_artifacts(next(r.info.run_id for r in runs if r.data.tags["cell"] == "tokencut/none"),
                                        "records/folder.csv", str(tmp_path))
    import pandas as pd
    assert len(pd.read_csv(records)) == 2  # a mask per image, scored at the image's size
    capsys.readouterr()
    assert make_tables(["--grid", str(grid), "--out-dir", str(tmp_path / "t")]) == 0
    table = (tmp_path / "t" / "m.md").read_text()
    assert "tokencut/bf" in table and "Sempart (published)" in table


@pytest.mark.parametrize("grid", ["table1", "table2"])
def test_the_grids_train_found_as_experiments_found_yaml_does(grid):
    """A grid's FOUND cell is the training of experiments/found.yaml (its authors' recipe), and both
    single and multi readings of it share that training."""
    from segtricks.config.grid import read_grid
    from segtricks.config.schema import load_config
    from segtricks.engine.training import training_hash
    own = load_config(REPO_EXPERIMENTS / "found.yaml")
    cell = dict(read_grid(grid).configs)["found"]
    assert training_hash(cell) == training_hash(own) and cell.optim.epochs == own.optim.epochs
    assert training_hash(load_config(REPO_EXPERIMENTS / "found.yaml", {"found": {"mode": "multi"}})) == training_hash(own)
    assert training_hash(load_config(REPO_EXPERIMENTS / "found.yaml", {"found": {"lr_step": 5}})) != training_hash(own)


def registered_methods():
    from segtricks.methods.registry import METHODS
    return METHODS.names()


# The demo backbone, and the backbones beyond the paper (patch 14, registers, RoPE) at a size their patch divides
BACKBONE_SIZES = {"demo_vit4": 56, "dinov2_vits14": 56, "dinov2_vits14_reg": 56, "dinov3_vits16": 64}


@pytest.mark.parametrize("backbone", sorted(BACKBONE_SIZES))
@pytest.mark.parametrize("name", registered_methods())
def test_every_registered_method_segments_a_photo_on_a_random_init_backbone(name, backbone):
    """Each entry as the engine reads it: a training method's recipe builds a model that predicts a batch,
    and is a per-image Method exactly when registered per_image; a training-free entry is built by
    build_method. Whatever the path, a per-image method gives a mask at the image's size and a box in it.
    On the demo backbone and on DINOv2 (with and without registers) and DINOv3 (issue 32)."""
    from segtricks.config.schema import config_from_dict
    from segtricks.methods.base import Method
    from segtricks.methods.registry import METHODS, build_method, training_recipe
    attrs = METHODS.attributes(name)
    assert METHODS.get(name).__doc__ or type(METHODS.get(name)).__doc__
    size = BACKBONE_SIZES[backbone]
    cfg = config_from_dict({"method": name, "backbone": {"name": backbone, "weights": "random-init"},
                            "data": {"image_size": size, "resize_short": size + 7}})
    torch.manual_seed(0)
    if attrs["trains"]:
        recipe = training_recipe(cfg)
        model = recipe.build_model(cfg)
        out = model(torch.rand(2, 3, size, size))
        terms = recipe.loss_terms(model, torch.rand(2, 3, size, size), out, cfg, 0,
                                  targets=torch.rand(2, size, size) > 0.5)
        assert terms and set(terms) <= set(recipe.loss_weights(cfg))
        assert all(t.ndim == 0 and torch.isfinite(t) and t.requires_grad for t in terms.values())
        if attrs["training_tricks"]:  # crop reads the model's coarse and fine masks: its terms come out
            from segtricks.engine.loop import loss_terms
            from segtricks.runtime.device import FP32
            cfg.tricks = ["crop"]
            with_crop = loss_terms(model, torch.rand(2, 3, size, size), cfg, torch.Generator().manual_seed(0), FP32)
            assert {"crop_ncut", "crop_eq"} <= set(with_crop) and all(torch.isfinite(t) for t in with_crop.values())
            cfg.tricks = []
        method = recipe.as_method(cfg, model)
        assert (method is not None) == attrs["per_image"]
        if method is None:
            return
    else:
        assert attrs["per_image"]
        method = build_method(cfg, torch.device("cpu"))
    assert isinstance(method, Method)
    image = torch.rand(3, 37, 50)
    out = method.predict(image, "saliency")
    assert out.mask.shape == (37, 50) and np.isfinite(out.mask).all()
    assert 0 <= out.box[0] < out.box[2] <= 50 and 0 <= out.box[1] < out.box[3] <= 37
