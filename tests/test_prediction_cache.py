"""The evaluation's prediction cache: one model run per (model, dataset), the same numbers either way,
a changed model never served stale masks, and a killed evaluation leaves no cache behind."""
import json
import os

import pytest
import torch

from helpers import DEMO_CELL
from segtricks.config.schema import DatasetRef, load_config
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.models.model import build_model
from segtricks.evaluation.prediction_cache import as_cached
from segtricks.evaluation.predict import predict_raw
from segtricks.method.tricks import postprocess

REF = DatasetRef("synthetic", split="test", limit=12)


@pytest.fixture
def setting(tmp_path):
    cfg = load_config(DEMO_CELL, {"output_dir": str(tmp_path / "run"), "optim.batch_size": 4})
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval(), tmp_path / "run" / "predictions"


class CountingForward:
    """Counts (or forbids) calls of the model's forward."""

    def __init__(self, model, forbid=False, fail_after=None):
        self.model, self.calls, self.forbid, self.fail_after = model, 0, forbid, fail_after
        self.forward = model.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            self.calls += 1
            if self.forbid:
                raise AssertionError("the model ran although its predictions are cached")
            if self.fail_after is not None and self.calls > self.fail_after:
                raise KeyboardInterrupt  # a kill in the middle of the evaluation
            return self.forward(*args, **kwargs)
        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.forward


def scores(cfg, model, tricks, cache_dir):
    ev = evaluate_model(model, cfg, REF, tricks, with_structure=False, progress=False, cache_dir=cache_dir)
    return ev.results(), ev.records()


def test_a_second_evaluation_reads_the_cache_and_reports_the_same_numbers(setting):
    cfg, model, cache = setting
    with CountingForward(model) as first:
        plain, plain_records = scores(cfg, model, [], cache)
    assert first.calls == 3 and len(list(cache.glob("*.npy"))) == 1  # 12 images, batches of 4
    with CountingForward(model, forbid=True):
        again, again_records = scores(cfg, model, [], cache)
        gf, _ = scores(cfg, model, ["gf"], cache)  # another cell of the same training: no model run
    assert again == plain and again_records.equals(plain_records)
    assert gf["iou"] != plain["iou"]


def test_cached_masks_are_the_models_masks_at_float16(setting):
    cfg, model, cache = setting
    scores(cfg, model, [], cache)
    images = torch.stack([torch.rand(3, 56, 56) for _ in range(2)])
    raw = predict_raw(model, images)
    assert (as_cached(raw) - raw).abs().max() < 1e-3
    # the GF cell on cached masks equals GF on the model's masks at the cache's precision
    with CountingForward(model, forbid=True):
        cached_gf, _ = scores(cfg, model, ["gf"], cache)
    import segtricks.evaluation.model_evaluation as evaluation
    original = evaluation.predict_raw
    evaluation.predict_raw = lambda m, x, p="ours", f=None: as_cached(original(m, x, p, f))
    try:
        fresh_gf, _ = scores(cfg, model, ["gf"], None)
    finally:
        evaluation.predict_raw = original
    assert cached_gf == pytest.approx(fresh_gf, abs=1e-12)
    assert postprocess(as_cached(raw), images, ["gf"], cfg).shape == raw.shape


def test_a_changed_model_rebuilds_the_cache_and_drops_the_stale_one(setting):
    cfg, model, cache = setting
    before, _ = scores(cfg, model, [], cache)
    old = set(cache.iterdir())
    with torch.no_grad():
        model.head.fine.bias += 3.0  # a retrained head: every mask changes
    with CountingForward(model) as run:
        after, _ = scores(cfg, model, [], cache)
    assert run.calls == 3 and after != before
    assert not old & set(cache.iterdir()) and len(list(cache.glob("*.npy"))) == 1


def test_a_killed_evaluation_leaves_no_cache(setting):
    cfg, model, cache = setting
    with CountingForward(model, fail_after=1), pytest.raises(KeyboardInterrupt):
        scores(cfg, model, [], cache)
    assert not list(cache.iterdir())  # nor a temporary file
    with CountingForward(model) as run:  # the next evaluation builds it from scratch
        scores(cfg, model, [], cache)
    assert run.calls == 3 and len(list(cache.glob("*.npy"))) == 1


def test_a_second_model_on_the_same_backbone_reads_the_keys_and_runs_only_its_head(setting, tmp_path):
    cfg, model, _ = setting
    keys = tmp_path / "keys"
    scores_with_keys = lambda m, cache: evaluate_model(m, cfg, REF, [], with_structure=False, progress=False,
                                                       cache_dir=cache, keys_dir=keys).results()
    first = scores_with_keys(model, tmp_path / "a")
    assert len(list(keys.glob("demo_vit4-*.npy"))) == 1
    torch.manual_seed(1)
    other = build_model(cfg).eval()  # another training: a new head, the same frozen backbone
    backbone_forward = other.backbone.forward
    other.backbone.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the backbone ran"))
    second = scores_with_keys(other, tmp_path / "b")
    other.backbone.forward = backbone_forward
    again = scores_with_keys(other, tmp_path / "c")  # keys read again, masks predicted again: equal
    assert second == again and second != first
    # the keys were the backbone's, at float16
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        exact = other.backbone(other.normalise(images))
    assert (as_cached(exact) - exact).abs().max() <= exact.abs().max() * 1e-3


def test_two_workers_publishing_the_same_cache_at_once_both_finish(tmp_path, monkeypatch):
    """Before: the .json was written through one temporary name for every process, so the second of
    two workers publishing the same keys at once (--workers N, trainings on one backbone) found its
    temporary file taken by the first's rename and failed its evaluation with FileNotFoundError."""
    from segtricks.evaluation.prediction_cache import ArrayCache
    me, other = os.getpid(), os.getppid()  # two live processes: a writer's partial file is removed only once it is dead
    pid = {"now": me}
    monkeypatch.setattr(os, "getpid", lambda: pid["now"])
    ids = ["a", "b"]
    first, second = (ArrayCache(tmp_path, "keys", {}, ids, (1,)) for _ in range(2))
    first.put(ids, torch.zeros(2, 1))
    pid["now"] = other
    second.put(ids, torch.ones(2, 1))
    real_replace = os.replace

    def replace(src, dst):  # the second worker publishes between the first's .json write and rename
        if str(dst).endswith(".json") and pid["now"] == me:
            pid["now"] = other
            second.close(ids)
            pid["now"] = me
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    pid["now"] = me
    first.close(ids)
    monkeypatch.undo()
    again = ArrayCache(tmp_path, "keys", {}, ids, (1,))
    assert again.complete and again.get(ids).tolist() in ([[0.0], [0.0]], [[1.0], [1.0]])  # one writer's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [again.path.with_suffix(".json").name, again.path.name]


def test_caches_turned_off_write_nothing_and_change_no_number(setting, tmp_path):
    cfg, model, cache = setting
    keys_dir = tmp_path / "keys"
    cached = evaluate_model(model, cfg, REF, ["gf"], with_structure=False, progress=False, cache_dir=cache,
                            keys_dir=keys_dir)
    assert list(cache.glob("*.npy")) and list(keys_dir.glob("*.npy"))
    cfg.cache.keys = cfg.cache.masks = False
    off_cache, off_keys = tmp_path / "off" / "predictions", tmp_path / "off" / "keys"
    with CountingForward(model) as counted:
        off = evaluate_model(model, cfg, REF, ["gf"], with_structure=False, progress=False, cache_dir=off_cache,
                             keys_dir=off_keys)
    assert counted.calls == 3 and not off_cache.exists() and not off_keys.exists()
    assert off.results() == cached.results() and off.records().equals(cached.records())


def test_building_and_reading_a_cache_maps_none_of_it_into_memory(setting, monkeypatch):
    """A memory map's dirty pages count in the resident set until flushed (gigabytes while a DUTS-TE
    key cache is built): rows go through pread/pwrite instead."""
    from segtricks.evaluation import prediction_cache
    cfg, model, cache = setting
    mapped = []
    put = prediction_cache.ArrayCache.put

    def put_and_look(self, ids, rows):
        put(self, ids, rows)
        mapped.append(str(self._tmp) in open("/proc/self/maps").read())
    monkeypatch.setattr(prediction_cache.ArrayCache, "put", put_and_look)
    first, _ = scores(cfg, model, [], cache)
    (npy,) = cache.glob("*.npy")
    again, _ = scores(cfg, model, [], cache)
    assert mapped == [False] * 3 and str(npy) not in open("/proc/self/maps").read()
    assert again == first


def test_cache_file_names_are_those_earlier_evaluations_wrote(setting, tmp_path):
    """A cache is found by its file name: the names (protocol name included) and the hash of the key
    stay those of the caches already on disk (the key cache's does not depend on the model) until what
    the rows depend on changes. The hashes changed once, on purpose, when the keys began to follow
    DINO's positional interpolation and the caches began to record their precision (issues 33, 34):
    rows computed the old way are other numbers, and no evaluation may read them."""
    cfg, model, _ = setting
    keys = tmp_path / "keys"
    for protocol in ("ours", "reference"):
        evaluate_model(model, cfg, REF, [], with_structure=False, progress=False, protocol=protocol, keys_dir=keys)
    stems = ["demo_vit4-synthetic-test-12-56-ours-739040322ff9c95c",
             "demo_vit4-synthetic-test-12-56-reference-8d9a37b837c285d5"]
    assert sorted(p.name for p in keys.iterdir()) == [f"{stem}.{ext}" for stem in stems for ext in ("json", "npy")]
    about = json.loads(next(keys.glob("*-ours-*.json")).read_text())
    assert (about["kind"], about["protocol"], about["rows"]) == ("keys", "ours", 12)


def test_the_partial_file_of_a_killed_writer_is_removed_by_the_next_writer(setting, tmp_path):
    """Issue 28 defect 4: kill -9 while a cache was written left its ``.<name>.<host>.<pid>.tmp`` for good
    (gigabytes at Table 3's scale); only ``cache rm`` removed it. ``cache ls`` lists it meanwhile."""
    import signal
    import subprocess
    import sys
    import time
    from helpers import REPO
    cfg, model, _ = setting
    cache = tmp_path / "outputs" / "trainings" / "0123456789abcdef" / "predictions"  # where cache ls looks
    # a writer that predicts slowly (a sleep per batch), killed -9 once its partial file exists
    script = (f"import time, torch; from segtricks.config.schema import DatasetRef, load_config; "
              f"from segtricks.models.model import build_model; "
              f"from segtricks.evaluation.model_evaluation import evaluate_model; "
              f"cfg = load_config({str(DEMO_CELL)!r}, {{'output_dir': {str(tmp_path / 'run')!r}, "
              f"'optim.batch_size': 4}}); torch.manual_seed(0); m = build_model(cfg).eval(); f = m.forward; "
              f"m.forward = lambda *a, **k: (time.sleep(0.5), f(*a, **k))[1]; "
              f"evaluate_model(m, cfg, DatasetRef('synthetic', split='test', limit=12), [], "
              f"with_structure=False, progress=False, cache_dir={str(cache)!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob(".*.tmp")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = cache.glob(".*.tmp")
    from segtricks.cache import main as cache_command
    import contextlib
    import io
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        assert cache_command(["ls", "--output-root", str(tmp_path / "outputs")]) == 0
    assert f"partial  {left}" in listing.getvalue() and "left by a killed evaluation" in listing.getvalue()
    scores(cfg, model, [], cache)  # the next writer of the folder
    assert not list(cache.glob(".*.tmp")) and len(list(cache.glob("*.npy"))) == 1
