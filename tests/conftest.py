import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never download weights: a missing file must fail at once, not after a network timeout."""
    monkeypatch.setenv("SEGTRICKS_OFFLINE", "1")
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
