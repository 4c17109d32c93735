import pytest

from segtricks.backbones import BACKBONES, build_backbone
from segtricks.datasets import DATASETS
from segtricks.registry import Registry, UnknownNameError
from segtricks.tricks import TRICKS, get_tricks


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
