"""The torch paths meant for CUDA, run on the CPU under rules that refuse what CUDA refuses (issue 34).

CI has no GPU, so a CUDA-only branch can be wrong in ways the CPU forgives: the bilateral solver's
grid hashed pixels with an integer matrix product, which CUDA does not have ("addmv_impl_cuda" not
implemented for 'Long'), and crashed every BF cell on the first GPU. Here every tensor the code puts on
the device is a CPU tensor that says it is on another device (``Emulated``), and ``CudaRules`` (a
``TorchDispatchMode``) runs each operation on the CPU after refusing:
- an integer ``mm``/``mv``/``bmm``/``dot`` (and their ``add*`` forms) on the device;
- a CPU tensor (not a 0-d scalar) meeting device tensors in one operation (a device mismatch on CUDA);
- a float64 result on the device where the path claims float32 (``float64=False``).
Factories asked for that device make emulated tensors; ``.cpu()`` gives plain ones back.

The emulated device is ``meta``, standing for CUDA: the code picks its device path by ``device.type !=
"cpu"``, and a tensor that claimed ``cuda`` would make torch's C++ device guards (indexing, for one)
call the CUDA driver, which a machine without a GPU does not have; ``meta``'s guard does nothing.
"""
from typing import List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from helpers import tiny_config
from segtricks.runtime.device import FP32
from segtricks.evaluation.predict import predict_raw
from segtricks.method import losses
from segtricks.method.bilateral_solver import bilateral_solver_filter
from segtricks.method.guided_filter import guided_filter
from segtricks.models.model import build_model

CUDA = torch.device("meta")  # the device the paths run on: CUDA's stand-in (module docstring)
aten = torch.ops.aten
PRODUCTS = {aten.mm, aten.mv, aten.bmm, aten.dot, aten.vdot, aten.addmm, aten.addmv, aten.addbmm, aten.baddbmm}


class CudaRefusal(AssertionError):
    """An operation CUDA would refuse."""


class Emulated(torch.Tensor):
    """A CPU tensor that reports ``CUDA`` as its device; only ``CudaRules`` computes with it."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                   device=CUDA, storage_offset=inner.storage_offset(),
                                                   requires_grad=inner.requires_grad)

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"Emulated({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise CudaRefusal(f"{func} on an emulated CUDA tensor outside CudaRules")


def _wants_cuda(device) -> bool:
    return device is not None and torch.device(device).type == CUDA.type


class CudaRules(TorchDispatchMode):
    def __init__(self, float64: bool = False) -> None:
        super().__init__()
        self.float64 = float64
        self.ops: List[str] = []  # what ran on the device: a test checks its path was taken

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(isinstance(t, Emulated) for t in tensors)
        made_on_device = _wants_cuda(kwargs.get("device"))
        if made_on_device:
            kwargs["device"] = torch.device("cpu")
        if on_device:
            host = [t for t in tensors if not isinstance(t, Emulated) and t.dim() > 0]
            if host:
                raise CudaRefusal(f"{func}: a CPU tensor {tuple(host[0].shape)} {host[0].dtype} meets CUDA tensors")
            if func.overloadpacket in PRODUCTS and any(not (t.is_floating_point() or t.is_complex()) for t in tensors):
                raise CudaRefusal(f"{func}: CUDA has no integer matrix product ({[t.dtype for t in tensors]})")
        out = func(*tree_map(_inner, args), **tree_map(_inner, kwargs))
        leaves_to_device = made_on_device or on_device and "device" not in kwargs
        if not leaves_to_device:
            return out
        self.ops.append(str(func.overloadpacket))
        if not self.float64:
            wide = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.dtype == torch.float64]
            if wide:
                raise CudaRefusal(f"{func}: a float64 result on the device in a path that claims float32")
        return tree_map(lambda t: Emulated(t) if isinstance(t, torch.Tensor) else t, out)


def _inner(x):
    return x.inner if isinstance(x, Emulated) else x


@pytest.fixture(autouse=True)
def autocast_regions_of_the_stand_in(monkeypatch):
    """``torch.autocast("meta")`` does not exist: regions on the stand-in are the CPU's (the paths here
    run in float32, where a region changes nothing)."""
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, *a, **k: real(
        "cpu" if device_type == CUDA.type else device_type, *a, **k))


def test_the_rules_refuse_what_cuda_refuses():
    with CudaRules():
        a = torch.arange(6, device=CUDA).reshape(2, 3)
        with pytest.raises(CudaRefusal, match="no integer matrix product"):
            a @ torch.ones(3, dtype=torch.long, device=CUDA)  # the bilateral solver's hash, before the fix
        with pytest.raises(CudaRefusal, match="a CPU tensor"):
            a + torch.ones(2, 3, dtype=torch.long)
        with pytest.raises(CudaRefusal, match="float64"):
            a.double()
        assert (a.float() + torch.tensor(1.0)).cpu().tolist() == [[1, 2, 3], [4, 5, 6]]  # a 0-d scalar may meet them


def test_the_bilateral_solvers_torch_grid_runs_as_on_cuda_and_equals_the_numpy_path():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 56), indexing="ij")
    mask = ((yy ** 2 + xx ** 2) < 0.4).float()[None, None] * 0.8 + 0.1 * torch.rand(1, 1, 40, 56)
    image = torch.stack([0.5 + 0.3 * mask[0, 0], 0.3 + 0.2 * yy, 0.6 - 0.2 * xx])[None].clamp(0, 1)
    expected = bilateral_solver_filter(mask, image)  # the CPU's numpy grid
    with CudaRules(float64=True) as rules:  # float64 as the reference's solver (module docstring)
        out = bilateral_solver_filter(mask.to(CUDA), image.to(CUDA))
        assert out.device == CUDA and out.dtype == torch.float32
        got = out.cpu()
    assert {"aten.index_add", "aten.searchsorted"} <= set(rules.ops)  # the torch grid ran, on the device
    assert (got - expected).abs().max() < 1e-4


def test_the_guided_filter_and_the_losses_run_as_on_cuda_in_float32():
    torch.manual_seed(0)
    mask, image = torch.rand(2, 1, 24, 24), torch.rand(2, 3, 24, 24)
    coarse, feats = torch.rand(2, 1, 6, 6), torch.randn(2, 16, 6, 6)
    expected = [guided_filter(mask, image, 3, 1e-3), losses.ncut_loss(coarse, losses.thresholded_affinity(feats, 0.4, 1e-6)),
                losses.fine_graph_tv(mask, image, 1.0), losses.coarse_graph_tv(coarse, feats, 0.4, 1e-6),
                losses.coarse_fine_consistency(coarse, mask)]
    with CudaRules():
        m, im, c, f = (t.to(CUDA) for t in (mask, image, coarse, feats))
        got = [guided_filter(m, im, 3, 1e-3), losses.ncut_loss(c, losses.thresholded_affinity(f, 0.4, 1e-6)),
               losses.fine_graph_tv(m, im, 1.0), losses.coarse_graph_tv(c, f, 0.4, 1e-6),
               losses.coarse_fine_consistency(c, m)]
        got = [g.cpu() for g in got]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_the_model_and_prediction_run_as_on_cuda_in_float32(tmp_path):
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 32, 32)
    expected = predict_raw(model, images, precision=FP32)
    with CudaRules():
        model.to(CUDA)
        out = predict_raw(model, images.to(CUDA), precision=FP32)
        assert out.device == CUDA
        got = out.cpu()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name,size", [("dinov2_vits14_reg", 42), ("dinov3_vits16", 48)])
def test_the_backbones_beyond_the_paper_give_their_keys_and_attention_as_on_cuda(name, size):
    """Registers, DINOv2's antialiased positional resize and DINOv3's rotary embedding (built per grid at
    each call) on the device: every tensor they make is made there (issue 32)."""
    from segtricks.models.backbones import build_backbone
    backbone = build_backbone(name, "random-init", rope_keys="after" if name == "dinov3_vits16" else None)
    image = torch.rand(1, 3, size, size)
    with torch.no_grad():
        expected = backbone.keys_and_attention(image)
        with CudaRules():
            backbone.to(CUDA)
            keys, attention = backbone.keys_and_attention(image.to(CUDA))
            assert keys.device == CUDA
            got = keys.cpu(), attention.cpu()
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("method", ["found", "selfmask"])
def test_found_and_selfmask_loss_terms_run_as_on_cuda_in_float32(tmp_path, method):
    """Their training step's forward and loss terms with the model and batch on the device: FOUND's
    background and bilateral-solver targets (the solver runs on the host by design, its result comes back),
    SelfMask's decoder, Dice and ranking terms; equal to the CPU's."""
    from segtricks.engine.loop import loss_terms
    cfg = tiny_config(tmp_path, {"method": method, "data.val": None, "selfmask.queries": 3,
                                 "selfmask.decoder_layers": 2})
    torch.manual_seed(0)
    from segtricks.methods.registry import training_recipe
    model = training_recipe(cfg).build_model(cfg)
    images, targets = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32) > 0.5
    expected = {k: v.detach() for k, v in loss_terms(model, images, cfg, None, FP32, 0, targets).items()}
    with CudaRules() as rules:
        model.to(CUDA)
        got = loss_terms(model, images.to(CUDA), cfg, None, FP32, 0, targets.to(CUDA))
        assert all(v.device == CUDA for v in got.values())
        got = {k: v.detach().cpu() for k, v in got.items()}
    assert rules.ops and got.keys() == expected.keys()
    for k in got:
        torch.testing.assert_close(got[k], expected[k], msg=k)


def test_the_precision_rule_is_bf16_only_where_native(monkeypatch):
    """Issue 34 defect 2: ``is_bf16_supported()`` says yes to emulated bf16 (T4, RTX 20xx)."""
    from segtricks.runtime.device import BF16, FP16, precision_of
    assert precision_of(torch.device("cpu")) == FP32
    monkeypatch.setattr(torch.cuda, "device", lambda index: __import__("contextlib").nullcontext())
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for native, expected in ((True, BF16), (False, FP16)):
        assert precision_of(torch.device("cuda", 0)) == expected
    assert asked == [False, False] and FP16.scales_loss and not BF16.scales_loss


def test_every_evaluation_path_sees_the_same_keys_and_the_caches_key_on_precision(tmp_path):
    """Issue 34 defect 3: the keys cache was computed in fp32 and ``evaluate`` in bf16; a cache made on the
    CPU served a GPU evaluation. Now one function computes the keys on every path, and each cache's name
    says the precision its rows were computed under."""
    from segtricks.evaluation.model_evaluation import evaluate_model
    from segtricks.evaluation.prediction_cache import key_cache, prediction_cache
    from segtricks.data.datasets import build_dataset
    from segtricks.config.schema import DatasetRef
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ref = DatasetRef("synthetic", split="test", limit=6)
    scores = [evaluate_model(model, cfg, ref, with_structure=False, progress=False, **where).records()
              for where in ({}, {"keys_dir": tmp_path / "keys"}, {"keys_dir": tmp_path / "keys"},
                            {"cache_dir": tmp_path / "masks", "keys_dir": tmp_path / "keys"},
                            {"cache_dir": tmp_path / "masks"})]
    for other in scores[1:]:  # no cache, building the keys, reading them, with the mask cache: one set of numbers
        assert other.equals(scores[0])
    raw = build_dataset(ref)
    for make in (key_cache, prediction_cache):
        fp32, bf16 = (make(tmp_path / "k", model, ref, raw, cfg.data.image_size, "ours", p) for p in ("fp32", "bf16"))
        assert fp32.path != bf16.path
