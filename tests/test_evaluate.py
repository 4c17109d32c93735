import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import DEMO_CELL as DEMO, maps_folder, require_shared
from segtricks.config.schema import Config, DatasetRef, config_from_dict, load_config
from segtricks.evaluate import main
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.evaluation.saliency_maps import evaluate_maps
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.models.model import build_model
from segtricks.engine.training import Training


def test_maps_cli_prints_table_and_writes_records(tmp_path, capsys):
    root = require_shared("sod300")
    out = tmp_path / "records.csv"
    assert main(["--maps", str(root / "maps" / "DSS"), "--dataset", "folder", "--root", str(root),
                 "--limit", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| max_fbeta_pr_curve |" in text and "| s_measure |" in text and "| n_images | 20 |" in text
    rec = pd.read_csv(out)
    assert len(rec) == 20 and {"image_id", "object_ratio", "iou", "acc", "mae"} <= set(rec.columns)


@pytest.mark.parametrize("post", [["gf"], ["bf"]])
def test_post_processing_of_other_methods_maps(post):
    """Paper Table 5: GF/BF applied to precomputed maps changes the scores (and needs no model)."""
    root = require_shared("sod300")
    ref = DatasetRef("folder", root=str(root), limit=8)
    plain = evaluate_maps(root / "maps" / "Amulet", Config(), ref, progress=False, with_structure=False)
    filtered = evaluate_maps(root / "maps" / "Amulet", Config(), ref, post, progress=False, with_structure=False)
    assert plain.results()["mae"] != filtered.results()["mae"]
    assert 0.3 < filtered.results()["iou"] <= 1


def test_map_of_wrong_size_and_missing_map_are_clear_errors(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(2):
        Image.new("RGB", (24, 16)).save(root / "images" / f"a{i}.jpg")
        Image.new("L", (24, 16), 255).save(root / "masks" / f"a{i}.png")
    Image.new("L", (10, 10)).save(maps / "a0.png")
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)]) == 2
    assert "a0.png is 10×10 but image a0 is 24×16" in capsys.readouterr().err
    Image.new("L", (24, 16)).save(maps / "a0.png")
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)]) == 2
    assert "no saliency map for image 'a1'" in capsys.readouterr().err
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root), "--skip-bad"]) == 0
    assert "| n_images | 1 |" in capsys.readouterr().out


def test_run_cli_scores_a_trained_model_with_corloc(tmp_path, capsys):
    cfg = config_from_dict({
        "backbone": {"name": "demo_vit4"},
        "data": {"train": {"name": "synthetic", "limit": 8}, "image_size": 32, "resize_short": 36, "num_workers": 0},
        "optim": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 1}, "output_dir": str(tmp_path / "run")})
    Training(cfg).run()
    assert main(["--run", str(tmp_path / "run"), "--dataset", "synthetic", "--split", "test", "--limit", "6",
                 "--post", "gf"]) == 0
    text = capsys.readouterr().out
    assert "demo_vit4 (random-init)" in text and "| corloc |" in text and "| n_images | 6 |" in text
    assert main(["--run", str(tmp_path / "run"), "--dataset", "synthetic", "--post", "crop"]) == 2
    assert "training trick" in capsys.readouterr().err


def test_centre_prior_baseline_matches_the_issue_measurement(capsys):
    """The issue measured a centred Gaussian prior at mean IoU .33 on SOD300."""
    root = require_shared("sod300")
    assert main(["--centre-prior", "--dataset", "folder", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    iou = float(next(line for line in text.splitlines() if line.startswith("| iou |")).split("|")[2])
    assert iou == pytest.approx(0.33, abs=0.01)
    assert "centred Gaussian prior" in text


def test_0_1_masks_score_as_their_0_255_originals(tmp_path, capsys):
    """Issue: DSS maps scored IoU 0.0000 against SOD300's masks saved as 0/1, silently."""
    root = require_shared("sod300")
    ones = tmp_path / "sod_0_1"
    (ones / "masks").mkdir(parents=True)
    os.symlink(root / "images", ones / "images")
    for mask in (root / "masks").glob("*.png"):
        Image.fromarray((np.asarray(Image.open(mask)) > 128).astype(np.uint8)).save(ones / "masks" / mask.name)
    args = ["--maps", str(root / "maps" / "DSS"), "--dataset", "folder", "--limit", "12"]
    assert main(args + ["--root", str(root)]) == 0
    original = capsys.readouterr().out.split("| metric |")[1]
    with pytest.warns(UserWarning, match="masks valued 0/1 .*: value 1 is foreground") as said:
        assert main(args + ["--root", str(ones)]) == 0
    assert len(said) == 1 and capsys.readouterr().out.split("| metric |")[1] == original
    assert "| iou | 0.0000 |" not in original


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    root, maps = maps_folder(tmp_path)
    out = tmp_path / "r.txt"
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root), "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --out {out}: use a .csv or .parquet file name"
    assert main(["--run", str(tmp_path / "nothing"), "--dataset", "synthetic"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --run {tmp_path / 'nothing'}: {tmp_path / 'nothing' / 'config.yaml'} does not exist: is "
        f"{tmp_path / 'nothing'} a finished "
        f"training folder?")
    assert main(["--maps", str(maps), "--dataset", "nonesuch"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: unknown dataset 'nonesuch'; registered")


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Issue 21 item 6: evaluate caught every ValueError, so a bug in the metrics printed as a user error
    with exit 2; only the errors a user can act on (segtricks.errors) are one line now."""
    root, maps = maps_folder(tmp_path)

    def broken(self, *args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (10,20) (20,10)")
    monkeypatch.setattr(SaliencyEvaluator, "update", broken)
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)])


def test_all_background_ground_truth_is_refused(tmp_path, capsys):
    root, maps = maps_folder(tmp_path)
    for i in range(3):
        Image.new("L", (24, 16), 0).save(root / "masks" / f"a{i}.png")
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: dataset 'folder' ({root}): none of the 3 ground-truth masks has a foreground pixel (> 128, or 1 "
        f"in 0/1 masks); check its masks, nothing was scored")
    Image.new("L", (24, 16), 255).save(root / "masks" / "a1.png")  # one image with an object is a dataset
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)]) == 0


def test_image_name_that_is_not_utf8_is_named_not_a_traceback(tmp_path):
    """Issue: b'caf\\xe9.png' among the images was a 44-line UnicodeEncodeError from evaluate."""
    root, maps = maps_folder(tmp_path)
    for sub, name in ((root / "images", b"caf\xe9.jpg"), (root / "masks", b"caf\xe9.png"), (maps, b"caf\xe9.png")):
        with open(os.path.join(os.fsencode(sub), name), "wb") as f:
            (Image.new("RGB", (24, 16)) if sub.name == "images" else Image.new("L", (24, 16), 255)).save(f, "PNG")
    name = repr(os.path.join(os.fsencode(root / "images"), b"caf\xe9.jpg"))
    cli = [sys.executable, "-m", "segtricks.evaluate", "--maps", str(maps), "--dataset", "folder", "--root", str(root)]
    refused = subprocess.run(cli, capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1] == (f"error: image file name {name} is not valid UTF-8 (rename the file, "
                                              f"or set on_error: skip / pass --skip-bad)")
    out = tmp_path / "records.csv"
    skipped = subprocess.run(cli + ["--skip-bad", "--out", str(out)], capture_output=True, text=True)
    assert skipped.returncode == 0 and "Traceback" not in skipped.stderr
    assert f"  b'caf\\xe9': file name {name} is not valid UTF-8" in skipped.stdout.splitlines()
    assert "| n_images | 3 |" in skipped.stdout and "| skipped | 1 |" in skipped.stdout
    assert pd.read_csv(out)["image_id"].tolist() == ["a0", "a1", "a2"]


def test_unreadable_map_is_named_and_skipped_with_skip_bad(tmp_path, capsys):
    """Issue 11 defect 5: a text file named x.png was a raw PIL.UnidentifiedImageError, even with --skip-bad."""
    root, maps = maps_folder(tmp_path)
    (maps / "a1.png").write_text("not an image")
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root)]) == 2
    assert f"cannot read {maps / 'a1.png'}" in capsys.readouterr().err
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "| n_images | 2 |" in out and "| skipped | 1 |" in out
    assert f"a1: cannot read {maps / 'a1.png'}" in out


def test_skip_bad_counts_and_lists_every_skipped_image(tmp_path, capsys):
    """Issue 11 defect 6: missing maps (and images without masks) were dropped without a count."""
    root, maps = maps_folder(tmp_path, n=4)
    (maps / "a0.png").unlink()
    (root / "masks" / "a3.png").unlink()
    (root / "images" / "a2.png").write_bytes(b"\xff\xd8 truncated")
    ref = DatasetRef("folder", root=str(root), on_error="skip")
    with pytest.warns(UserWarning):
        ev = evaluate_maps(maps, Config(), ref, progress=False)
    assert sorted(i for i, _ in ev.skipped) == ["a0", "a2", "a3"]
    assert ev.results()["skipped"] == 3 and ev.results()["n_images"] == 1
    assert main(["--maps", str(maps), "--dataset", "folder", "--root", str(root), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 image(s)" in out and "a0: no saliency map" in out and "a3: no mask" in out


def test_per_image_phases_run_on_one_thread_and_the_count_is_restored(tmp_path, monkeypatch):
    """segtricks.runtime.threads: the model keeps every thread; post-processing and metrics run on one."""
    cfg = load_config(DEMO, {"output_dir": str(tmp_path)})
    model = build_model(cfg).eval()
    seen, update = [], SaliencyEvaluator.update
    monkeypatch.setattr(SaliencyEvaluator, "update", lambda self, *a, **k: (seen.append(torch.get_num_threads()),
                                                                              update(self, *a, **k)))
    forward = model.forward
    model.forward = lambda *a, **k: (seen.append(("model", torch.get_num_threads())), forward(*a, **k))[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate_model(model, cfg, DatasetRef("synthetic", split="test", limit=4), ["gf"], progress=False,
                       with_structure=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen[0] == ("model", 2) and seen[1:] == [1, 1, 1, 1]


@pytest.mark.parametrize("tricks", [["gf"], ["gf", "bf"]])
def test_post_processing_of_maps_in_numpy_gives_the_torch_tricks_numbers(tricks):
    """Issue 21: GF on maps runs without torch (segtricks.method.guided_filter_numpy), to the same bits."""
    from segtricks.evaluation.saliency_maps import postprocess_map
    from segtricks.method.tricks import postprocess

    rng = np.random.default_rng(0)
    soft = rng.random((37, 53))
    hwc = rng.random((37, 53, 3)).astype(np.float32)
    rgb = hwc.transpose(2, 0, 1)  # the layout evaluate_maps passes
    expected = postprocess(torch.from_numpy(soft)[None, None].float(), torch.from_numpy(hwc).permute(2, 0, 1)[None],
                           tricks, Config())[0, 0].double().numpy()
    assert np.array_equal(postprocess_map(soft, rgb, tricks, Config()), expected)
