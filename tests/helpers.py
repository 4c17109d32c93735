"""What the tests share: the tiny test cell, grid and study files, data builders, the shared data's
location and a store's runs. Tests import this module (never one another); ``conftest.py`` holds only
fixtures."""
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from segtricks.config.schema import Config, Layer, compose, read_yaml_mapping

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_GOLDEN = REPO.parent / "shared" / "golden"
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


def write_grid(tmp_path: Path, entries, epochs: int = 1, name: str = "mini") -> Path:
    """A grid file over the demo cell with one axis ``tricks`` of the given YAML ``entries``."""
    lines = [f"name: {name}", f"base: {DEMO_CELL}", f"set: {{optim.epochs: {epochs}}}", "axes:", "  tricks:"]
    lines += [f"    - {e}" for e in entries]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_study(tmp_path, name="tiny", pruner="{name: none}", space=None, sampler="{name: random, seed: 0}", **extra):
    """A study file over the demo cell cut to seconds per trial (2 epochs of 2 steps)."""
    space = space or {"crop.eq_weight": "{type: float, low: 1.0e-3, high: 1.0e-1, log: true}",
                      "gf.radius": "{type: int, low: 1, high: 6}"}
    lines = [f"name: {name}", f"base: {DEMO_CELL}",
             "set: {optim.epochs: 2, optim.steps_per_epoch: 2, optim.batch_size: 4, data.train.limit: 8,",
             "      tricks: [crop, gf]}",
             "objective: {dataset: {name: synthetic, split: val, limit: 4}, metric: iou, direction: maximize}",
             "search_space:"] + [f"  {k}: {v}" for k, v in space.items()]
    lines += [f"pruner: {pruner}", f"sampler: {sampler}", f"n_trials: {extra.get('n_trials', 2)}"]
    path = tmp_path / f"study_{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def maps_folder(tmp_path: Path, n: int = 3):
    """A ``folder`` dataset of ``n`` 24×16 images, masks and maps (a rectangle, also in the image, so
    that its edges guide a filter): (dataset root, maps folder)."""
    root, maps = tmp_path / "ds", tmp_path / "maps"
    for folder in (root / "images", root / "masks", maps):
        folder.mkdir(parents=True)
    for i in range(n):
        mask = Image.new("L", (24, 16), 0)
        mask.paste(255, (4, 4, 16, 12))
        mask.convert("RGB").save(root / "images" / f"a{i}.png")
        mask.save(root / "masks" / f"a{i}.png")
        mask.save(maps / f"a{i}.png")
    return root, maps


def store_client(folder: Path):
    """An MLflow client of the SQLite store ``<folder>/mlflow.db`` (the default a command run there uses)."""
    from mlflow.tracking import MlflowClient
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def grid_runs(folder: Path, grid: str = "mini"):
    """(client, runs) of grid ``grid`` in ``<folder>/mlflow.db`` (no runs when it has no experiment)."""
    client = store_client(folder)
    exp = client.get_experiment_by_name(grid)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def random_photos(folder: Path, sizes: Sequence[Tuple[int, int]]) -> Path:
    """``folder`` (created) holding ``im<i>.png``, a random RGB image of each (W, H) in ``sizes``: what
    ``segment`` reads."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def pngs_of(folder: Path) -> Dict[str, np.ndarray]:
    """Every PNG of ``folder`` by stem, as arrays (the masks ``segment`` wrote)."""
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}
