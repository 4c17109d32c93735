"""Every cell of every grid keeps its config and training hashes (issue 29): a run counts as done by its
config hash, and a training is found by its training hash, so restructuring the code must not change
them. ``data/grid_hashes.json`` was written from the grids as they were before the restructuring (the
``modern`` grid's when it was added, issue 32)."""
import json
from pathlib import Path

import pytest

from helpers import REPO
from segtricks.runners.plan import load_grid

PINNED = json.loads((Path(__file__).parent / "data" / "grid_hashes.json").read_text())
# Cells whose config changed on purpose, pinned at their new hashes: Table 5's TokenCut rows scored
# maps a user brought from TokenCut's own code; since TokenCut runs here they run it (issue 30).
PINNED["table5"].update({
    "tokencut/none": {"config": "325ef06ec4cd", "training": None},
    "tokencut/gf": {"config": "f98b6d105887", "training": None},
    "tokencut/bf": {"config": "cfc7bcb5d8b4", "training": None},
})


@pytest.mark.parametrize("grid", sorted(PINNED))
def test_each_cells_hashes_are_those_of_the_earlier_runs(grid, monkeypatch):
    monkeypatch.chdir(REPO)
    cells = {c.id: c for c in load_grid(grid).cells}
    for cell_id, pinned in PINNED[grid].items():
        assert cell_id in cells, f"{grid}: cell {cell_id} is gone"
        cell = cells[cell_id]
        assert cell.config_hash.startswith(pinned["config"]), f"{grid} {cell_id}: config hash changed"
        assert (cell.training_hash if cell.trains else None) == pinned["training"], f"{grid} {cell_id}: training hash"
