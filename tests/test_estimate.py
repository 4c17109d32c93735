"""The cost estimate: which evaluation computes what, exact cache sizes, published dataset sizes when
the data is absent, and what ``ablate --dry-run --estimate`` prints."""
from types import SimpleNamespace

import pytest

from segtricks.ablate import main
from segtricks.config.schema import DatasetRef, config_from_dict
from segtricks.data.datasets import DATASETS, PUBLISHED_SIZES, DatasetSize, dataset_size
from segtricks.estimate.cache_plan import CachePlan, disk_needed
from segtricks.estimate.cost import CellEstimate, GridEstimate
from segtricks.estimate.report import format_estimate
from segtricks.runners.plan import Action



def cell(name, training, backbone="demo_vit4", size=56, eval_protocols=("ours",), cache=None):
    cfg = config_from_dict({"backbone": {"name": backbone}, "data": {"image_size": size},
                            "eval": [{"name": "ecssd"}], "eval_protocols": list(eval_protocols),
                            "cache": cache or {}})
    return SimpleNamespace(name=name, id=name, cfg=cfg, trains=True, training_hash=training)


def sizes(ref):
    return DatasetSize(1000, (300, 400), "published")


def test_the_first_cell_of_a_training_predicts_and_the_second_backbone_training_runs_the_head_only():
    plan = CachePlan(sizes)
    first, shares, second = (plan.evaluations(cell("a", "t1")), plan.evaluations(cell("b", "t1")),
                             plan.evaluations(cell("c", "t2")))
    assert [p.predict for p in first + shares + second] == ["model", "cached", "head"]
    # demo_vit4: 96-d keys on a 14×14 grid at 56²; masks 56×56; float16
    assert first[0].mask_bytes == 1000 * 56 * 56 * 2 and first[0].key_bytes == 1000 * 96 * 14 * 14 * 2
    assert shares[0].mask_bytes == shares[0].key_bytes == 0
    assert second[0].mask_bytes == 1000 * 56 * 56 * 2 and second[0].key_bytes == 0


def test_the_reference_protocol_counts_twice_and_caches_turned_off_take_no_disk():
    plan = CachePlan(sizes)
    both = plan.evaluations(cell("a", "t1", eval_protocols=("ours", "reference")))
    assert [p.protocol for p in both] == ["ours", "reference"] and all(p.mask_bytes for p in both)
    off = CachePlan(sizes).evaluations(cell("a", "t1", cache={"keys": False, "masks": False}))
    assert off[0].mask_bytes == off[0].key_bytes == 0 and off[0].predict == "model"
    again = CachePlan(sizes)
    again.evaluations(cell("a", "t1", cache={"keys": False, "masks": False}))
    assert again.evaluations(cell("b", "t1"))[0].predict == "model"  # nothing was cached for it


def test_paper_datasets_have_published_sizes_used_when_the_data_is_absent(monkeypatch):
    monkeypatch.delenv("SEGTRICKS_DATA", raising=False)
    assert set(DATASETS.names()) - set(PUBLISHED_SIZES) == {"folder"}  # a folder is whatever it holds
    assert dataset_size(DatasetRef("duts_tr", split="train")).images == 10_053
    assert dataset_size(DatasetRef("duts_tr", split="val")).images == 500
    assert dataset_size(DatasetRef("dut_omron", split="test")) == DatasetSize(5_168, (300, 400), "published")
    assert dataset_size(DatasetRef("ecssd", split="test", limit=10)).images == 10


def test_present_data_is_counted_with_its_typical_size(tmp_path):
    from PIL import Image
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / f"{i}.jpg")
    assert dataset_size(DatasetRef("folder", root=str(tmp_path))) == DatasetSize(3, (30, 40), "data")


def test_table3_needs_its_cache_sizes_before_anything_is_downloaded(monkeypatch):
    """Table 3's 12 cells: 6 trainings × 11,187 masks at 320², and 11,187 keys for each backbone."""
    monkeypatch.delenv("SEGTRICKS_DATA", raising=False)
    from segtricks.config.grid import read_grid
    cells = [SimpleNamespace(name=n, id=n, cfg=c, trains=True, training_hash=n.split("/")[0] + ("crop" in n) * "+crop")
             for n, c in read_grid("table3").configs]
    masks = 6 * 11_187 * 320 * 320 * 2
    keys = 11_187 * 2 * 384 * (40 * 40 + 2 * 20 * 20)  # S/8: 40×40 keys; S/16 twice: 20×20; float16
    assert disk_needed(cells, {}) == masks + keys
    assert 34e9 < masks + keys < 35e9  # 13.7 GB of masks, 13.7 + 2 × 3.4 GB of keys


def test_a_grid_that_would_not_fit_on_the_disk_is_warned_with_the_numbers():
    est = GridEstimate("cpu", [CellEstimate("a", "train+evaluate", 10, 5, 1, 2e9, {"keys": 3e9})], 4.0, ["x"], [])
    text = format_estimate(est, free_bytes=1e9)
    assert "warning: the grid needs about 3.0 GB of disk and 1.0 GB is free" in text
    assert "warning" not in format_estimate(est, free_bytes=1e12)


@pytest.mark.slow
def test_dry_run_estimate_prints_time_memory_and_disk_per_cell_and_in_total(in_tmp, capsys, monkeypatch):
    assert main(["--grid", "demo", "--dry-run", "--estimate", "--set", "optim.steps_per_epoch=2",
                 "--set", "data.train.limit=8", "--set", "data.val.limit=4",
                 "--set", "eval=[{name: synthetic, split: test, limit: 8}]"]) == 0
    out = capsys.readouterr().out
    table = out.split("estimate on cpu")[1].split("assumptions:")[0].splitlines()
    rows = {line.split()[0]: line.split() for line in table if line.strip().startswith("demo_vit4/")}
    assert set(rows) == {"demo_vit4/baseline", "demo_vit4/crop", "demo_vit4/gf", "demo_vit4/crop+gf"}
    assert rows["demo_vit4/baseline"][1] == "train+evaluate" and rows["demo_vit4/gf"][1] == "evaluate"
    assert "checkpoints" in " ".join(rows["demo_vit4/crop"]) and "masks" not in " ".join(rows["demo_vit4/gf"])
    total = [line for line in table if line.strip().startswith("total ")]
    assert len(total) == 1 and ("GB" in total[0] or "MB" in total[0])
    assert "random-init" in out and "synthetic/test: 8 images of about 128×128 (data)" in out
    assert "every workload measured now" in out
    assert list(in_tmp.iterdir()) == []  # a dry run writes nothing where it runs, estimate included
    # issue 29: a second estimate (of this grid, or one sharing its workloads) measures nothing
    from segtricks.estimate import cost
    calls = []
    for name in ("measure_training", "measure_prediction", "measure_post", "measure_metrics"):
        real = getattr(cost, name)
        monkeypatch.setattr(cost, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    flags = ["--grid", "demo", "--dry-run", "--estimate", "--set", "optim.steps_per_epoch=2", "--set",
             "data.train.limit=8", "--set", "data.val.limit=4", "--set", "eval=[{name: synthetic, split: test, limit: 8}]"]
    assert main(flags) == 0
    assert calls == [] and "0 workload(s) measured now, the others kept" in capsys.readouterr().out
    assert main(flags + ["--remeasure"]) == 0
    assert "measure_training" in calls and "every workload measured now" in capsys.readouterr().out


def test_the_preflight_warns_when_the_caches_would_not_fit(monkeypatch, tmp_path):
    from segtricks.runners import preflight
    monkeypatch.delenv("SEGTRICKS_DATA", raising=False)  # ECSSD's published 1,000 images
    cells = [cell("a", "t1")]
    assert preflight.disk_warning(cells, {}, tmp_path) is None  # 7 MB of masks and 38 MB of keys fit here
    monkeypatch.setattr(preflight, "free_bytes", lambda root: 1e6)
    line = preflight.disk_warning(cells, {}, tmp_path)
    assert line.startswith("warning: the grid's evaluation caches need about 43.9 MB and 1.0 MB is free at ")
    assert "--set cache.keys=false" in line
    assert preflight.disk_warning(cells, {"a": Action.SKIP}, tmp_path) is None  # a finished cell writes nothing
