"""What a run records about the code and machine that produced it (``environment.json``)."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict

from segtricks.tracking.claims import WORKER

PACKAGES = ("segtricks", "torch", "torchvision", "timm", "mlflow", "optuna", "numpy", "pandas")


def environment() -> Dict[str, str]:
    """Package versions, Python, platform and the git commit of the working tree."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "worker": WORKER}
    for pkg in PACKAGES:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    try:
        root = Path(__file__).resolve().parents[2]
        env["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        env["git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = "unknown"
    return env
