"""The one-cell trainer on the weight-free demo backbone and synthetic data (tiny sizes)."""
import pytest
import torch

from helpers import tiny_config
from segtricks.engine import checkpoint, loop
from segtricks.runtime.device import BF16, FP32, resolve_device
from segtricks.engine.loop import Hook, NonFiniteLossError, loss_terms, loss_weights
from segtricks.engine.training import ConfigMismatchError, Training
from segtricks.evaluation.predict import predict_masks, predict_raw, select_foreground
from segtricks.method import losses
from segtricks.method.tricks import postprocess
from segtricks.models.model import build_model
from segtricks.registry import UnknownNameError


# Two epochs of two steps, so that a training can be interrupted and resumed between them, with the
# tricks on; 16 training and 8 validation images
TRAINER = {"data.train.limit": 16, "data.val.limit": 8, "optim.epochs": 2, "optim.steps_per_epoch": 2,
           "tricks": ["crop", "gf"]}


def tiny(tmp_path, name="run", over=None):
    return tiny_config(tmp_path / name, {**TRAINER, **(over or {})})


class Interrupt(Exception):
    pass


class Recorder(Hook):
    """Records the loop's calls to its hooks; raises Interrupt after epoch ``stop_after`` (which the
    checkpoint hook, before it, has saved)."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def before_train(self, state):
        self.calls.append("before_train")

    def after_epoch(self, state, metrics):
        self.calls.append(f"after_epoch {state.epoch}")
        if state.epoch == self.stop_after:
            raise Interrupt

    def after_train(self, state):
        self.calls.append("after_train")


@pytest.fixture
def step_bars(monkeypatch):
    """The step bars that ``train_one_epoch`` opens (tqdm marks a bar it has closed ``disable``)."""
    bars = []

    class Recorded(loop.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(loop, "tqdm", Recorded)
    return bars


def trained(cfg, *hooks):
    training = Training(cfg)
    training.run(hooks)
    return training


# FOUND's schedule crosses the epoch boundary: its background term stops after step 3 (of 4), and its rate
# steps at every step, both counted in global steps that a resumed run must continue
FOUND = {"method": "found", "tricks": [], "data.val": None, "found.stop_bkg_loss": 3, "found.lr_step": 1}
# SelfMask fine-tunes the backbone (its weights are in the checkpoint) and trains on the synthetic masks
SELFMASK = {"method": "selfmask", "tricks": [], "data.val": None, "selfmask.queries": 3, "selfmask.decoder_layers": 2}


@pytest.mark.parametrize("method", [{}, FOUND, SELFMASK], ids=["sempart", "found", "selfmask"])
def test_resumed_training_ends_with_the_same_weights(tmp_path, step_bars, method):
    full = trained(tiny(tmp_path, "full", method))
    cfg = tiny(tmp_path, "resumed", method)
    interrupted = Recorder(stop_after=0)
    with pytest.raises(Interrupt):
        trained(cfg, interrupted)
    assert interrupted.calls == ["before_train", "after_epoch 0", "after_train"]  # after_train on failure too
    assert checkpoint.load(cfg.output_dir + "/last.pt")["epoch"] == 0
    resumed_calls = Recorder()
    resumed = trained(cfg, resumed_calls)
    assert resumed_calls.calls == ["before_train", "after_epoch 1", "after_train"]  # only the second epoch ran
    assert len(step_bars) == 4 and all(bar.disable for bar in step_bars)  # every step bar closed
    a = checkpoint.load(full.last_path)["head"]
    b = checkpoint.load(resumed.last_path)["head"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history() == resumed.history()


def test_builtin_hooks_run_in_their_order_before_the_callers(tmp_path):
    caller = Recorder()
    training = Training(tiny(tmp_path))
    assert [type(h).__name__ for h in training.build_hooks([caller])] == [
        "Validation", "Checkpointing", "ProgressLine", "Recorder"]
    training.cfg.data.val = None  # nothing to validate on: the latest epoch is the best
    assert [type(h).__name__ for h in training.build_hooks()] == ["Checkpointing", "ProgressLine"]


def test_training_changes_the_head_and_is_deterministic(tmp_path):
    cfg = tiny(tmp_path, "a", {"optim.epochs": 1})
    first = checkpoint.load(trained(cfg).last_path)["head"]
    second = checkpoint.load(trained(tiny(tmp_path, "b", {"optim.epochs": 1})).last_path)["head"]
    torch.manual_seed(cfg.seed)
    init = build_model(cfg).head.state_dict()
    assert any(not torch.equal(first[k], init[k]) for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_finished_training_does_no_more_work(tmp_path):
    cfg = tiny(tmp_path)
    trained(cfg)
    calls = Recorder()
    result = trained(cfg, calls)
    assert calls.calls == [] and len(result.history()) == 2


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    result = trained(tiny(tmp_path, over={"optim.epochs": 3}))
    ious = [h["val.iou"] for h in result.history()]
    best = checkpoint.load(result.best_path)
    assert best["epoch"] == result.status().best_epoch == ious.index(max(ious))
    assert best["weights_id"] == "random-init"
    assert (result.dir / "config.yaml").read_text().count("demo_vit4") == 1


def test_output_dir_of_another_config_is_refused(tmp_path):
    trained(tiny(tmp_path, over={"optim.epochs": 1}))
    with pytest.raises(ConfigMismatchError, match="another config") as refused:
        trained(tiny(tmp_path, over={"optim.epochs": 1, "optim.lr": 1e-3}))
    assert refused.value.exit_code == 2


def test_nan_loss_stops_naming_step_and_term(tmp_path, monkeypatch, step_bars):
    monkeypatch.setattr(losses, "fine_graph_tv", lambda *a, **k: torch.tensor(float("nan")))
    calls = Recorder()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1: fine_tv=nan") as stopped:
        trained(tiny(tmp_path), calls)
    assert stopped.value.exit_code == 1
    assert calls.calls == ["before_train", "after_train"]  # after_train on failure too
    assert len(step_bars) == 1 and step_bars[0].disable  # the bar of the failed epoch is closed


@pytest.mark.parametrize("over,error,match", [
    ({"tricks": ["crop", "sharpen"]}, UnknownNameError, "unknown trick 'sharpen'; registered tricks: bf, crop, gf"),
    ({"backbone.name": "dino_vitz8"}, UnknownNameError, "registered backbones: .*dino_vits8"),
    ({"data.image_size": 34, "data.resize_short": 40}, ValueError, "34 is not a multiple of the patch size 4 of backbone 'demo_vit4'; use 32 or 36"),
])
def test_bad_cell_fails_before_training(tmp_path, over, error, match):
    with pytest.raises(error, match=match):
        trained(tiny(tmp_path, over=over))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_prediction_uses_running_batchnorm_statistics(tmp_path):
    """A mask must not depend on which other images share its batch (SPEC §8.2)."""
    cfg = tiny(tmp_path, over={"optim.epochs": 1})
    model = build_model(cfg)
    model.head.load_state_dict(checkpoint.load(trained(cfg).last_path)["head"])
    model.train()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    together = predict_masks(model, images, cfg)
    alone = predict_masks(model, images[:1], cfg)
    torch.testing.assert_close(together[:1], alone)
    assert model.training  # the caller's mode is restored


def test_foreground_is_selected_per_image():
    masks = torch.stack([torch.full((1, 4, 4), 0.9), torch.full((1, 4, 4), 0.2)])
    out = select_foreground(masks)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.1, 0.2]))


def test_loss_terms_under_cpu_bf16_autocast_match_float32(tmp_path):
    """``loss_terms`` with the model under bf16 autocast (CPU standing in for CUDA) against float32:
    random-init demo_vit4 at 48 px, batch 2, tricks [crop]. Every term is float32 and finite, and the
    backward pass reaches every head parameter.

    Tolerances, from the largest relative differences measured over 100 random-init models (25 seeds
    × 32, 40, 48, 56 px): ncut 6.6e-3, fine_tv 4.5e-3, consistency 4.3e-3, crop_ncut 2.7e-3, crop_eq
    6.6e-3 → rtol 2e-2. coarse_tv weighs each of only 8 edges per patch 1 or ε by its cosine against τ:
    the bf16 backbone moves a cosine by up to ~3e-3, and one edge crossing τ moved the term by up to
    39%, so it is compared on the float32 features (measured 1.3e-2, rtol 4e-2). The head's gradient:
    cosine to the float32 one ≥ 0.9988 measured, 0.99 asserted.
    """
    cfg = tiny(tmp_path, over={"tricks": ["crop"], "data.image_size": 48, "data.resize_short": 48})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = torch.rand(2, 3, 48, 48)
    mask_dtypes = []
    model.head.register_forward_hook(lambda module, args, out: mask_dtypes.append(out["fine"].dtype))
    weights = loss_weights(cfg)
    terms, grads = {}, {}
    for autocast in (False, True):
        model.zero_grad()
        terms[autocast] = loss_terms(model, images, cfg, torch.Generator().manual_seed(0), BF16 if autocast else FP32)
        sum(weights[k] * v for k, v in terms[autocast].items()).backward()
        grads[autocast] = torch.cat([p.grad.flatten() for p in model.head.parameters()])
    assert mask_dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2  # the images, then the crops
    assert set(terms[True]) == {"ncut", "fine_tv", "coarse_tv", "consistency", "crop_ncut", "crop_eq"}
    for name, value in terms[True].items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        if name != "coarse_tv":
            torch.testing.assert_close(value, terms[False][name], rtol=2e-2, atol=0,
                                       msg=lambda m: f"{name}: {m}")
    lc = cfg.loss
    with torch.no_grad():
        fp32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images)
    on_fp32_features = losses.coarse_graph_tv(bf16["coarse"], fp32["features"], lc.tau, lc.eps)
    torch.testing.assert_close(losses.coarse_graph_tv(fp32["coarse"], fp32["features"], lc.tau, lc.eps),
                               terms[False]["coarse_tv"])
    torch.testing.assert_close(on_fp32_features, terms[False]["coarse_tv"], rtol=4e-2, atol=0)
    assert torch.isfinite(grads[True]).all() and grads[True].abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0) > 0.99


def test_prediction_under_cpu_bf16_autocast_hands_float32_downstream(tmp_path):
    """``predict_raw(precision=BF16)`` runs the model in bf16 (by default only on CUDA) and returns
    float32 masks, so the inversion, GF/BF and the caches work in float32; they differ from the
    float32 prediction by bf16 rounding (measured 2.1e-3)."""
    cfg = tiny(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    images = torch.rand(2, 3, 32, 32)
    mask_dtypes = []
    model.head.register_forward_hook(lambda module, args, out: mask_dtypes.append(out["fine"].dtype))
    fp32, bf16 = predict_raw(model, images), predict_raw(model, images, precision=BF16)
    assert mask_dtypes == [torch.float32, torch.bfloat16]
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=1e-2)
    assert postprocess(bf16, images, ["gf", "bf"], cfg).dtype == torch.float32


def test_auto_device_is_cuda_when_present(monkeypatch):
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")
