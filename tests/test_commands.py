"""The installed commands ([project.scripts]) are the README's `python -m` commands under stable names."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from helpers import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_declared_command_is_installed_with_the_same_target():
    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.name.startswith("segtricks")}
    assert installed == SCRIPTS, "reinstall the project (pip install -e .) after editing [project.scripts]"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_command_runs_and_its_module_is_the_one_the_readme_names(name):
    module = SCRIPTS[name].split(":")[0]
    script = Path(sys.executable).parent / name
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ")
    readme = (REPO / "README.md").read_text()
    assert f"python -m {module}" in readme, f"the README shows {module} as `python -m {module}`"
