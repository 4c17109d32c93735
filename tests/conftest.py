import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from segtricks.config.schema import Config, Layer, compose, read_yaml_mapping

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_CELL = REPO / "experiments" / "demo_cell.yaml"

# The demo cell cut to a training of seconds: one epoch of one step of 4 on 8 synthetic images at
# 32², validated on 4, no tricks, at the default (the paper's) learning rate, on demo_vit4's default
# weights (it has no official release: random-init).
TINY = {"data.train.limit": 8, "data.val.limit": 4, "data.image_size": 32, "data.resize_short": 36,
        "optim.epochs": 1, "optim.steps_per_epoch": 1, "optim.lr": 1.0e-4, "backbone.weights": None,
        "tricks": []}

# The CLI tests' grids over the demo cell (56², as users run it): 2 steps of 4 per epoch on 8
# images, validated on 4, evaluated on 4 test images (the last two items: drop them for no evaluation).
TINY_FLAGS = ["--set", "optim.steps_per_epoch=2", "--set", "optim.batch_size=4", "--set", "data.train.limit=8",
              "--set", "data.val.limit=4", "--set", "eval=[{name: synthetic, split: test, limit: 4}]"]


def tiny_config(output_dir: Path, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """The tiny test cell in ``output_dir``: experiments/demo_cell.yaml, then ``TINY``, then the test's
    own ``overrides`` (dotted keys), merged by ``compose`` as a user's file and ``--set`` flags are."""
    return compose([Layer(read_yaml_mapping(DEMO_CELL), str(DEMO_CELL)), Layer(TINY, "TINY (tests/conftest.py)"),
                    Layer({"output_dir": str(output_dir), **(overrides or {})}, "the test's overrides")])


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """Tests never download weights: a missing file must fail at once, not after a network timeout.
    Nor do they share the estimate's kept measurements (``segtricks.estimate.measure``) with the user's."""
    monkeypatch.setenv("SEGTRICKS_OFFLINE", "1")
    monkeypatch.setenv("SEGTRICKS_MEASUREMENTS", str(tmp_path_factory.mktemp("kept") / "measurements.json"))
    monkeypatch.delenv("SEGTRICKS_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", os.environ.get("PYTEST_TORCH_HOME", "/nonexistent-torch-home"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A scratch working directory: default mlflow.db, optuna.db and outputs/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def require_shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real test data lives in ../shared/data beside the repo)")
    return path


def unreadable_folder(tmp_path: Path) -> Path:
    """A ``folder`` dataset that exists (the preflight check passes) but whose one image is not an
    image: a cell evaluating on it fails when it reads the image, mid-run."""
    root = tmp_path / "unreadable"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "a.png").write_bytes(b"not a png")
    (root / "masks" / "a.png").write_bytes(b"not a png")
    return root


def demo_grid_store(root: Path, flags) -> str:
    """The demo grid run with ``flags`` into a fresh SQLite store in ``root`` (run from ``root``, so its
    outputs land there): the store's URI. For module-scoped fixtures that read a finished grid."""
    from segtricks.ablate import main as ablate
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        assert ablate(["--grid", "demo", "--tracking-uri", uri, *flags]) == 0
    finally:
        mp.undo()
    return uri
