"""Fixtures of every test; what tests share otherwise is in ``helpers.py``."""
import os

import numpy as np
import pytest

from helpers import SHARED_GOLDEN


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


@pytest.fixture(scope="session")
def baselines():
    """``../shared/golden/baselines.npz``: TokenCut's, LOST's and FOUND's own functions on six structured
    inputs (its README says what each key is); the test skips without it."""
    path = SHARED_GOLDEN / "baselines.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the authors' outputs live in ../shared/golden beside the repo)")
    return np.load(path)
