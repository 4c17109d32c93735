"""Fixtures of every test; what tests share otherwise is in ``helpers.py``."""
import os

import pytest


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
