"""Reading results, scoring saliency maps and checking a CLI's arguments import no torch (issue 21).

Each command runs in a fresh interpreter, as ``python -m``; the last line it prints lists which of
torch, torchvision and timm were imported.
"""
import subprocess
import sys

import pytest

from helpers import maps_folder, require_shared
from segtricks.tracking.store import Store

MODEL_STACK = ("torch", "torchvision", "timm")
# runs ``python -m <module> <args>`` (or imports the module when the only argument is "import"), then
# prints the model-stack modules it left in sys.modules
WRAPPER = f"""
import importlib, runpy, sys
module, args = sys.argv[1], sys.argv[2:]
code = 0
if args == ["import"]:
    importlib.import_module(module)
else:
    sys.argv = [module] + args
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
print("loaded:", sorted(m for m in {MODEL_STACK!r} if m in sys.modules))
sys.exit(code)
"""


def loaded(module, *args):
    """(exit code, output, the model-stack modules the command imported)."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, module, *map(str, args)], capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded: "), done.stderr[-2000:]
    return done.returncode, done.stdout + done.stderr, eval(last[len("loaded: "):])


@pytest.mark.parametrize("module", ["analysis.make_tables", "analysis.runs", "segtricks.tracking.store",
                                    "segtricks.tracking.artifacts", "segtricks.evaluation.saliency_maps",
                                    "segtricks.evaluation.metrics", "segtricks.data.datasets",
                                    "segtricks.data.pseudo_masks", "segtricks.method.guided_filter_numpy",
                                    "segtricks.engine.checkpoint"])
def test_reading_results_and_scoring_maps_import_no_torch(module):
    code, out, heavy = loaded(module, "import")
    assert code == 0 and heavy == [], out


@pytest.mark.parametrize("module", ["segtricks.train", "segtricks.evaluate", "analysis.make_tables", "segtricks.cache",
                                    "segtricks.segment"])
def test_help_imports_no_torch(module):
    code, out, heavy = loaded(module, "--help")
    assert code == 0 and "usage:" in out and heavy == []


def test_cli_argument_errors_import_no_torch(tmp_path):
    code, out, heavy = loaded("segtricks.train", "--config", tmp_path / "missing.yaml")
    assert (code, heavy) == (2, []) and f"error: config file {tmp_path / 'missing.yaml'} does not exist" in out
    root, maps = maps_folder(tmp_path)
    code, out, heavy = loaded("segtricks.evaluate", "--maps", maps, "--dataset", "folder", "--root", root,
                              "--post", "typo")
    assert (code, heavy) == (2, []) and "error: unknown trick 'typo'; registered tricks: bf, crop, gf" in out
    code, out, heavy = loaded("analysis.make_tables", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert (code, heavy) == (2, []) and "error: no MLflow store at" in out
    code, out, heavy = loaded("segtricks.segment", "--run", "x", "--images", tmp_path / "none", "--out", tmp_path / "o")
    assert (code, heavy) == (2, []) and f"error: --images {tmp_path / 'none'}: no such folder" in out
    # a run id is looked up in the store (mlflow) before the model stack is loaded
    Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, out, heavy = loaded("segtricks.segment", "--run", "0123abcd", "--images", root / "images",
                              "--out", tmp_path / "o", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (code, heavy) == (2, []) and "error: --run 0123abcd: no run with that id (or id prefix)" in out


@pytest.mark.parametrize("post", [[], ["gf"]])
def test_scoring_maps_imports_no_torch(tmp_path, post):
    root, maps = maps_folder(tmp_path)
    code, out, heavy = loaded("segtricks.evaluate", "--maps", maps, "--dataset", "folder", "--root", root,
                              "--post", *post)
    assert code == 0 and "| iou | 1.0000 |" in out and "| n_images | 3 |" in out, out
    assert heavy == []


def test_scoring_published_maps_imports_no_torch():
    root = require_shared("sod300")
    code, out, heavy = loaded("segtricks.evaluate", "--maps", root / "maps" / "DSS", "--dataset", "folder",
                              "--root", root, "--limit", "20", "--post", "gf")
    assert code == 0 and "| n_images | 20 |" in out and heavy == []


def test_the_bilateral_solver_on_maps_does_import_torch(tmp_path):
    """The check above can fail: ``--post bf`` runs the torch trick."""
    root, maps = maps_folder(tmp_path, n=1)
    code, out, heavy = loaded("segtricks.evaluate", "--maps", maps, "--dataset", "folder", "--root", root,
                              "--post", "bf")
    assert code == 0 and "torch" in heavy, out
