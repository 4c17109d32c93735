import subprocess
import sys

import pytest

from segtricks.models.backbones import BACKBONES, build_backbone
from segtricks.data.datasets import DATASETS
from segtricks.errors import BadInput
from segtricks.registry import Registry, UnknownNameError, _declared_entries, registered_attributes
from segtricks.method.tricks import TRICKS, get_tricks


def test_duplicate_name_is_a_loud_error():
    reg = Registry("widget", contract="fn() -> None")

    @reg.register()
    def a():
        """A widget."""

    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: None)


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownNameError) as err:
        build_backbone("dino_vitb99", "random-init")
    msg = str(err.value)
    for name in ("dino_vits8", "dino_vits16", "ibot_vits16", "demo_vit4"):
        assert name in msg
    with pytest.raises(UnknownNameError, match="registered tricks: bf, crop, gf"):
        get_tricks(["gf", "sharpen"])


def test_registries_hold_the_paper_components():
    assert {"dino_vits8", "dino_vits16", "ibot_vits16", "demo_vit4"} <= set(BACKBONES.names())
    assert set(TRICKS.names()) == {"crop", "gf", "bf"}
    assert {TRICKS.get(n).stage for n in ("gf", "bf")} == {"post"} and TRICKS.get("crop").stage == "train"
    assert {"folder", "synthetic", "duts_tr"} <= set(DATASETS.names())


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registered_callable_documents_its_contract(name):
    assert BACKBONES.get(name).__doc__


def test_names_read_from_source_equal_the_live_registries():
    """The command-line tools check a grid's names (and datasets' splits) by reading the registering
    modules' source (no torch import); a registration that reading cannot see would make a valid grid fail."""
    from segtricks.config.grid import COMPONENTS
    from segtricks.methods.registry import METHODS
    live = {"backbone": BACKBONES, "trick": TRICKS, "dataset": DATASETS, "method": METHODS}
    for kind, (module, registry, helpers) in COMPONENTS.items():
        declared = _declared_entries(module, registry, tuple(helpers))
        assert list(declared) == live[kind].names(), kind
        assert declared == registered_attributes(module, registry, helpers), kind  # the live answer (imported)
        assert declared == {n: live[kind].attributes(n) for n in live[kind].names()}, kind


def test_attributes_are_registered_with_the_name_and_read_as_literals():
    reg = Registry("widget", contract="fn() -> None")

    @reg.register(splits=("a", "b"))
    def w():
        """A widget."""

    assert reg.attributes("w") == {"splits": ("a", "b")} and reg.attributes("w") is not reg.attributes("w")
    with pytest.raises(UnknownNameError, match="unknown widget 'v'; registered widgets: w"):
        reg.attributes("v")


def test_an_unknown_name_is_bad_input_and_a_duplicate_is_a_programming_error():
    assert issubclass(UnknownNameError, BadInput) and issubclass(UnknownNameError, KeyError)
    reg = Registry("widget", contract="fn() -> None")
    reg.register("a")(len)
    with pytest.raises(ValueError) as duplicate:
        reg.register("a")(len)
    assert not isinstance(duplicate.value, BadInput)  # a bug keeps its traceback, not an error: line


def test_a_typo_in_a_grid_name_is_reported_without_importing_torch():
    code = ("import sys; from segtricks.ablate import main; rc = main(['--grid', 'tabel3']); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from segtricks.tune import main as tune; rc2 = tune(['--study', 'dmeo']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc + rc2)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "unknown grid 'tabel3'" in proc.stderr and "dmeo" in proc.stderr
