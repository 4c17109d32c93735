"""Grid files and the ``ablate`` command line's checks before anything heavy runs (read_grid, torch-free)."""
import pytest

from conftest import DEMO_CELL
from segtricks.ablate import main
from segtricks.spec.config import ConfigError
from segtricks.spec.grid import read_grid

def write_grid(tmp_path, axes, name="mini"):
    """A grid over demo_cell.yaml; ``axes`` are its ``axes:`` lines (indented under it)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join([f"name: {name}", f"base: {DEMO_CELL}", "axes:", *axes]) + "\n")
    return path


FRAC_AND_TRICKS = ["  frac:",
                   "    - {name: small, set: {crop.frac: 0.25}}",
                   "    - {name: large, set: {crop: {frac: 0.75}}}",
                   "  tricks:",
                   "    - {name: crop, set: {tricks: [crop]}}",
                   "    - {name: crop+gf, set: {tricks: [crop, gf]}}"]


@pytest.mark.parametrize("flag,axis,line,entries", [
    ("crop.frac=0.5", "frac", 5, "small, large"),  # the key itself, set dotted and as a mapping
    ("crop={eq_weight: 0.1}", "frac", 5, "small, large"),  # a mapping above it replaces it
    ("tricks=[gf]", "tricks", 8, "crop, crop+gf"),
])
def test_a_set_flag_on_a_key_an_axis_varies_is_refused_in_one_line(tmp_path, capsys, flag, axis, line, entries):
    """Issue: such a --set collapsed every cell to one config hash without a warning."""
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    assert main(["--grid", str(grid), "--set", flag, "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --set {flag} overrides grid axis {axis!r} ({grid}:{line}: {entries}): the flag would replace "
        f"what those entries set; drop it, or add --force-set to apply it anyway"]


def test_a_set_flag_on_a_key_beside_or_below_what_an_axis_sets_is_accepted(tmp_path):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    cells = dict(read_grid(str(grid), ["crop.eq_weight=0.1", "gf.radius=4"]).configs)
    assert {c.crop.eq_weight for c in cells.values()} == {0.1}  # merged into the axis's crop mapping
    assert cells["large/crop"].crop.frac == 0.75


def test_force_set_applies_the_flag_and_names_the_axis_it_overrides(tmp_path):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid_file = read_grid(str(grid), ["crop.frac=0.5"], force_set=True)
    assert {c.crop.frac for _, c in grid_file.configs} == {0.5}
    assert grid_file.overridden == [f"--set crop.frac=0.5 overrides grid axis 'frac' ({grid}:5: small, large)"]


def test_force_set_on_the_command_line_goes_through_with_one_warning(in_tmp, capsys):
    grid = write_grid(in_tmp, FRAC_AND_TRICKS)
    assert main(["--grid", str(grid), "--set", "crop.frac=0.5", "--force-set", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"warning: --force-set: --set crop.frac=0.5 overrides grid axis 'frac' ({grid}:5: small, large)"]
    assert "4 cells, 1 trainings" in captured.out  # frac no longer differs, and gf needs no training


def test_a_trick_listed_twice_in_a_grid_axis_is_refused(tmp_path):
    grid = write_grid(tmp_path, ["  tricks:", "    - {name: crop, set: {tricks: [crop]}}",
                                 "    - {name: twice, set: {tricks: [gf, crop, gf]}}"])
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid))
    assert str(exc.value) == f"{grid}:6: tricks: 'gf' listed twice (cell twice)"


def test_a_trick_listed_twice_in_a_set_flag_is_refused_naming_the_flag(tmp_path, capsys):
    """Issue: --set tricks=[gf,gf] was accepted."""
    grid = write_grid(tmp_path, ["  seed:", "    - {name: s0, set: {seed: 0}}"])
    assert main(["--grid", str(grid), "--set", "tricks=[gf,gf]", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --set tricks=[gf,gf]: tricks: 'gf' listed twice (cell s0)"]


def test_a_grid_file_that_is_not_yaml_is_one_whole_line_then_the_caret(tmp_path, capsys):
    """Issue: a YAML error printed 5 lines, the problem on none of the first three."""
    grid = tmp_path / "broken.yaml"
    grid.write_text("name: broken\naxes:\n  tricks: [{name: a, set: {tricks: []}}\n")
    assert main(["--grid", str(grid), "--dry-run"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"error: {grid}:4:1: could not parse YAML: expected ',' or ']', but got '<stream end>' "
                        f"(while parsing a flow sequence at 3:11)")
    assert len(lines) == 1  # the end of the file: no caret to show
    grid.write_text("name: broken\naxes:\n  tricks: a: b\n")
    assert main(["--grid", str(grid), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {grid}:3:12: could not parse YAML: mapping values are not allowed here",
        "      tricks: a: b", "               ^"]


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_fewer_than_one_worker_is_refused_in_one_line(tmp_path, capsys, workers):
    """Issue: --workers 0 and --workers -3 were accepted and ran as 1."""
    assert main(["--grid", "demo", "--workers", workers, "--dry-run"]) == 2  # before the dry run
    assert capsys.readouterr().err.splitlines() == [f"error: --workers must be ≥ 1 (got {workers})"]
