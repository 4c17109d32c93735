"""Grid files and the ``ablate`` command line's checks before anything heavy runs (read_grid, torch-free)."""
import pytest

from helpers import DEMO_CELL
from segtricks.ablate import main
from segtricks.config.schema import ConfigError, config_hash
from segtricks.config.grid import baseline_keys, read_grid, read_table


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


def test_a_bad_key_in_the_grid_or_its_base_file_names_its_line(tmp_path):
    """Issue 21: a bad key in a base file named the file without its line."""
    grid = write_grid(tmp_path, ["  seed:", "    - {name: s0, set: {seed: 0}}"])
    grid.write_text(grid.read_text() + "tabel: {}\n")
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid))
    assert str(exc.value) == (f"{grid}:6: unknown key(s) tabel; valid keys: name, description, base, set, axes, seeds, "
                              f"table")
    base = tmp_path / "base.yaml"
    base.write_text("seed: 1\noptim:\n  lr: 1.0e-4\n  lrr: 1\n")
    grid.write_text(f"name: g\nbase: base.yaml\naxes:\n  seed:\n    - {{name: s0, set: {{seed: 0}}}}\n")
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid))
    assert str(exc.value).startswith(f"{base}:4: optim: unknown key(s) lrr; valid keys: batch_size, betas,")
    assert str(exc.value).endswith(" (cell s0)")
    grid.write_text(f"name: g\nbase: nope.yaml\naxes:\n  seed:\n    - {{name: s0, set: {{seed: 0}}}}\n")
    with pytest.raises(ConfigError, match=f"^{grid}:2: base config {tmp_path / 'nope.yaml'} does not exist$"):
        read_grid(str(grid))


def test_a_split_typo_in_an_axis_entry_names_the_line_before_torch(tmp_path):
    grid = write_grid(tmp_path, ["  val:", "    - {name: a, set: {data.val: {name: synthetic, split: val}}}",
                                 "    - name: b", "      set:", "        data.val.split: tset"])
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid))
    assert str(exc.value) == (f"{grid}:8: data.val.split: expected a split of synthetic (train, val, test), got "
                              f"'tset' (cell b)")


TABLE = ["table:", "  title: T", "  datasets: [synthetic]", "  metrics: [iou, corloc]"]


@pytest.mark.parametrize("lines,message", [
    (["  rows: [large/crop, large/crp]"], "{grid}:14: table.rows: 'large/crp' is not a cell of the grid; cells: "
     "small/crop, small/crop+gf, large/crop, large/crop+gf"),
    (["  published:", "    small/crop: [0.5, 1.0]", "    smal/crop: [0.5, 1.0]"],
     "{grid}:16: table.published: 'smal/crop' is not a cell of the grid; cells: small/crop, small/crop+gf, "
     "large/crop, large/crop+gf"),
    (["  published:", "    small/crop: [0.5]"],
     "{grid}:15: table.published.small/crop has 1 values; expected 2 (datasets × metrics, dataset-major)"),
    (["  published: {small/crop: [0.5, high]}"],
     "{grid}:14: table.published.small/crop: expected a list of 2 numbers (null: not published), got [0.5, 'high']"),
    (["  metric: [iou]"], "{grid}:14: table: unknown key(s) metric; valid keys: title, datasets, metrics, rows, "
                          "published, literature, contrasts"),
    # table: contrasts:
    (["  contrasts:", "    - {trick: small/crop+gf, baseline: small/crop}",
      "    - {trick: large/crp, baseline: large/crop}"],
     "{grid}:16: table.contrasts: 'large/crp' is not a cell of the grid; cells: small/crop, small/crop+gf, "
     "large/crop, large/crop+gf"),
    (["  contrasts:", "    - {trick: small/crop+gf}"],
     "{grid}:15: table.contrasts[0]: needs baseline (a cell of the grid)"),
    (["  contrasts:", "    - {trick: small/crop+gf, baseline: small/crop, p: 0.05}"],
     "{grid}:15: table.contrasts[0]: unknown key(s) p; valid keys: trick, baseline"),
    (["  contrasts:", "    - [small/crop+gf, small/crop]"],
     "{grid}:15: table.contrasts[0]: expected {{trick: <cell>, baseline: <cell>}}, got "
     "['small/crop+gf', 'small/crop']"),
    (["  contrasts:", "    - {trick: small/crop, baseline: small/crop}"],
     "{grid}:15: table.contrasts[0]: 'small/crop' against itself; a contrast needs two cells"),
    (["  contrasts:", "    - {trick: small/crop+gf, baseline: small/crop}",
      "    - {trick: small/crop+gf, baseline: small/crop}"],
     "{grid}:16: table.contrasts[1]: 'small/crop+gf' against 'small/crop' is declared twice"),
    (["  contrasts: small/crop"],
     "{grid}:14: table.contrasts: expected a list of {{trick: <cell>, baseline: <cell>}}, got 'small/crop'"),
])
def test_the_table_section_is_checked_against_the_cells_when_the_grid_is_read(tmp_path, lines, message):
    """Issue 21: the grid's table: section was only checked by make_tables, and a row's typo gave a row of —."""
    from analysis.paper import table_layout
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid.write_text(grid.read_text() + "\n".join(TABLE + lines) + "\n")
    for read in (read_grid, read_table, table_layout):
        with pytest.raises(ConfigError) as exc:
            read(str(grid))
        assert str(exc.value) == message.format(grid=grid)


@pytest.mark.parametrize("line,message", [
    ("  metrics: [iou, corlock]", "{grid}:13: table.metrics: 'corlock' is not a metric; metrics: acc, iou,"),
    ("  metrics: iou", "{grid}:13: table.metrics: expected a non-empty list of metrics, got 'iou'"),
    ("  datasets: [synthetik]",
     "{grid}:13: table.datasets: 'synthetik' is not a dataset; registered datasets: coco20k,"),
])
def test_table_datasets_and_metrics_must_be_known_names(tmp_path, line, message):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    key = line.split(":")[0]
    grid.write_text(grid.read_text() + "\n".join([t for t in TABLE if not t.startswith(key)] + [line]) + "\n")
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid))
    assert str(exc.value).startswith(message.format(grid=grid))


def test_a_valid_table_is_read_with_the_grid_and_by_itself(tmp_path):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid.write_text(grid.read_text() + "\n".join(TABLE + ["  rows: [large/crop]", "  published:",
                                                          "    large/crop: [0.5, 70]"]) + "\n")
    table = read_grid(str(grid)).table
    assert table == read_table(str(grid))
    assert (table.title, table.rows, table.datasets, table.metrics) == ("T", ("large/crop",), ("synthetic",),
                                                                        ("iou", "corloc"))
    assert table.published == {("large/crop", "synthetic", "iou"): 0.5, ("large/crop", "synthetic", "corloc"): 70.0}


# Study files are read by the same path (segtricks.config.study.load_study): every error names its line.
STUDY = ["name: s", f"base: {DEMO_CELL}", "objective:", "  dataset: {name: synthetic, split: val, limit: 4}",
         "  metric: iou", "search_space:", "  gf.radius: {type: int, low: 2, high: 4}"]


@pytest.mark.parametrize("old,new,message", [
    ("split: val,", "split: vla,", "{path}:4: objective.dataset.split: expected a split of synthetic (train, val, "
                                   "test), got 'vla'"),
    ("split: val,", "splt: val,", "{path}:4: objective.dataset: unknown key(s) splt; valid keys: limit, name, "
                                  "on_error, root, split"),
    ("  metric: iou", "  metric: IoU", "{path}:5: objective.metric 'IoU' unknown; one of acc, iou,"),
    ("  metric: iou", "  metrik: iou", "{path}:5: objective: unknown key(s) metrik; valid keys: dataset, metric, "
                                       "direction"),
    ("low: 2, high: 4", "low: 4, high: 2", "{path}:7: search_space.gf.radius: empty or inverted range [4, 2]"),
    ("name: s", "nme: s", "{path}:1: unknown key(s) nme; valid keys: name, description, base,"),
])
def test_a_study_file_error_names_its_line(tmp_path, old, new, message):
    """Issue 21: most study errors named the file without a line."""
    from segtricks.config.study import load_study
    path = tmp_path / "study_s.yaml"
    path.write_text("\n".join(STUDY).replace(old, new) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_study(str(path))
    assert str(exc.value).startswith(message.format(path=path))


# --- seeds (issue 22) ---------------------------------------------------------------------------------

def test_seeds_replicate_every_cell_seed_by_seed_under_its_own_name(tmp_path):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid.write_text(grid.read_text() + "seeds: [0, 3]\n")
    grid_file = read_grid(str(grid))
    names = [name for name, _ in grid_file.configs]
    assert grid_file.seeds == (0, 3) and len(names) == 4
    assert [(name, seed) for name, seed, _ in grid_file.replicas] == [(n, s) for s in (0, 3) for n in names]
    assert all(cfg.seed == seed for _, seed, cfg in grid_file.replicas)
    assert len({config_hash(cfg) for _, _, cfg in grid_file.replicas}) == 8
    # the seed is the last layer: what the cell sets stays, and seed 0 (the cell's own seed) is the cell itself
    assert dict((n, config_hash(c)) for n, s, c in grid_file.replicas if s == 0) == \
        {n: config_hash(c) for n, c in grid_file.configs}
    assert read_grid(str(grid), seeds=[5]).seeds == (5,)  # --seeds replaces the file's
    assert [s for _, s, _ in read_grid(str(write_grid(tmp_path, FRAC_AND_TRICKS, "plain"))).replicas] == [None] * 4


@pytest.mark.parametrize("value,line", [
    ("0,x", "error: --seeds 0,x: expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2"),
    ("0,-1", "error: --seeds 0,-1: expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2"),
    ("0,,1", "error: --seeds 0,,1: expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2"),
    ("", "error: --seeds : expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2"),
    ("1.5", "error: --seeds 1.5: expected a comma-separated list of integers ≥ 0, e.g. --seeds 0,1,2"),
    ("0,1,0", "error: --seeds 0,1,0: seed 0 is listed twice; list each seed once"),
])
def test_seeds_flag_that_is_not_distinct_integers_is_refused_in_one_line(tmp_path, capsys, value, line):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    assert main(["--grid", str(grid), "--seeds", value, "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [line]


@pytest.mark.parametrize("value,message", [
    ("[0, -1]", "seeds: expected a non-empty list of integers ≥ 0, e.g. seeds: [0, 1, 2]; got [0, -1]"),
    ("3", "seeds: expected a non-empty list of integers ≥ 0, e.g. seeds: [0, 1, 2]; got 3"),
    ("[]", "seeds: expected a non-empty list of integers ≥ 0, e.g. seeds: [0, 1, 2]; got []"),
    ("[0, true]", "seeds: expected a non-empty list of integers ≥ 0, e.g. seeds: [0, 1, 2]; got [0, True]"),
    ("[1, 2, 1]", "seeds: seed 1 is listed twice; list each seed once"),
])
def test_seeds_in_a_grid_file_are_checked_naming_the_line(tmp_path, value, message):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid.write_text(grid.read_text() + f"seeds: {value}\n")
    for seeds in (None, [0]):  # checked even when --seeds replaces them
        with pytest.raises(ConfigError) as exc:
            read_grid(str(grid), seeds=seeds)
        assert str(exc.value) == f"{grid}:10: {message}"


def test_a_set_flag_on_the_seed_with_seeds_is_refused_saying_why_unless_force_set(tmp_path, capsys):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    assert main(["--grid", str(grid), "--seeds", "0,1", "--set", "seed=4", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --set seed=4 is replaced by each replica's seed (--seeds 0,1), so the flag would change nothing; "
        "drop it, or add --force-set to go on anyway"]
    grid.write_text(grid.read_text() + "seeds: [0, 1]\n")
    grid_file = read_grid(str(grid), ["seed=4"], force_set=True)
    assert grid_file.overridden == [f"--set seed=4 is replaced by each replica's seed (seeds: [0, 1] at {grid}:10)"]
    assert [cfg.seed for _, _, cfg in grid_file.replicas] == [0] * 4 + [1] * 4
    assert {cfg.seed for _, cfg in read_grid(str(write_grid(tmp_path, FRAC_AND_TRICKS, "plain")),
                                                ["seed=4"]).configs} == {4}  # without seeds, as before


def test_an_axis_that_sets_the_seed_is_refused_with_seeds(tmp_path):
    grid = write_grid(tmp_path, ["  seed:", "    - {name: s0, set: {seed: 0}}", "    - {name: s1, set: {seed: 1}}"])
    assert len(read_grid(str(grid)).replicas) == 2  # without seeds, an axis of seeds as before
    with pytest.raises(ConfigError) as exc:
        read_grid(str(grid), seeds=[0, 1])
    assert str(exc.value) == (f"{grid}:5: axis 'seed' sets seed (s0, s1), which --seeds 0,1 sets in every replica; "
                              f"drop the axis or the seeds")


# --- contrasts (issue 22) -----------------------------------------------------------------------------

def test_declared_contrasts_are_pairs_of_the_table_and_absent_ones_are_empty(tmp_path):
    grid = write_grid(tmp_path, FRAC_AND_TRICKS)
    grid.write_text(grid.read_text() + "\n".join(TABLE) + "\n")
    assert read_table(str(grid)).contrasts == ()
    grid.write_text(grid.read_text() + "  contrasts:\n    - {trick: large/crop+gf, baseline: large/crop}\n"
                                       "    - {trick: large/crop, baseline: small/crop}\n")
    assert read_grid(str(grid)).table.contrasts == (("large/crop+gf", "large/crop"), ("large/crop", "small/crop"))


def test_baseline_keys_pair_each_trick_cell_with_its_config_without_tricks_across_seeds(tmp_path):
    grid = write_grid(tmp_path, ["  frac:", "    - {name: small, set: {crop.frac: 0.25}}",
                                 "    - {name: large, set: {crop.frac: 0.75}}",
                                 "  tricks:", "    - {name: baseline, set: {tricks: []}}",
                                 "    - {name: crop+gf, set: {tricks: [crop, gf]}}"])
    keys = baseline_keys(read_grid(str(grid)))
    assert {name: tricks for name, (tricks, _) in keys.items()} == {
        "small/baseline": (), "small/crop+gf": ("crop", "gf"), "large/baseline": (), "large/crop+gf": ("crop", "gf")}
    assert keys["small/crop+gf"][1] == keys["small/baseline"][1] != keys["large/baseline"][1]
    assert keys["small/baseline"][1] == config_hash(dict(read_grid(str(grid)).configs)["small/baseline"])
    assert baseline_keys(read_grid(str(grid), seeds=[1, 2])) == keys  # the replicas of a cell share its key
