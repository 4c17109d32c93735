import subprocess
import sys

import pytest

from helpers import DEMO_CELL
from segtricks.errors import BadInput
from segtricks.config.schema import (Config, ConfigError, check_keys, compose, config_from_dict, config_hash, load_config,
                                   read_yaml_file, resolved_yaml, set_flag_layers)
from segtricks.engine.training import training_hash


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("backbone: {name: dino_vits16}\noptim:\n  lr: 3e-4\n  betas: [0.9, 0.95]\ntricks: [crop, gf]\n")
    cfg = load_config(path, overrides={"crop.frac": 0.4, "seed": 3})
    assert cfg.backbone.name == "dino_vits16" and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.crop.frac == 0.4 and cfg.seed == 3 and cfg.tricks == ["crop", "gf"]
    again = tmp_path / "resolved.yaml"
    again.write_text(resolved_yaml(cfg))
    assert load_config(again) == cfg


def test_defaults_are_the_reference_defaults():
    c = Config()
    assert (c.optim.lr, c.optim.betas, c.optim.weight_decay, c.optim.batch_size, c.optim.epochs) == \
        (1e-4, (0.9, 0.99), 0.0, 8, 30)
    assert (c.loss.tau, c.loss.eps, c.crop.frac, c.crop.eq_weight, c.crop.ncut_weight) == (0.4, 1e-6, 0.5, 0.01, 0.01)
    assert (c.gf.radius, c.gf.eps) == (9, 1e-3)
    assert (c.bf.sigma_spatial, c.bf.sigma_luma, c.bf.sigma_chroma, c.bf.lam, c.bf.cg_iterations) == (16, 16, 8, 256, 25)
    assert (c.data.image_size, c.data.resize_short) == (320, 355)


@pytest.mark.parametrize("text,match", [
    ("optim: {lrr: 1}\n", r"cell.yaml:1: optim: unknown key\(s\) lrr"),
    ("seed: 1\noptim:\n  lr: 1.0e-4\n  lrr: 1\n", r"cell.yaml:4: optim: unknown key\(s\) lrr; valid keys: batch_size,"),
    ("optim: {lr: fast}\n", "cell.yaml:1: optim.lr: expected float, got 'fast'"),
    ("optim: {epochs: 2.5}\n", "optim.epochs: expected int"),
    ("tricks: gf\n", "tricks: expected a list"),
    ("optim: {lr: [1\n", r"cell.yaml:2:1: could not parse YAML: expected ',' or '\]'"),
    ("- 1\n- 2\n", "top level must be a mapping"),
])
def test_bad_yaml_names_the_file_and_key(tmp_path, text, match):
    path = tmp_path / "cell.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/file.yaml")


def test_training_hash_ignores_post_processing_and_epochs_only():
    base = config_from_dict({"tricks": ["crop"]})
    same = [
        {"tricks": ["crop", "gf"], "gf": {"radius": 4}},
        {"tricks": ["crop", "bf"], "optim": {"epochs": 60}, "output_dir": "elsewhere"},
    ]
    for d in same:
        assert training_hash(config_from_dict(d)) == training_hash(base)
    for d in ({"tricks": []}, {"tricks": ["crop"], "crop": {"frac": 0.3}},
              {"tricks": ["crop"], "seed": 1}, {"tricks": ["crop"], "optim": {"lr": 2e-4}}):
        assert training_hash(config_from_dict(d)) != training_hash(base)
    # crop parameters do not matter while crop is off
    assert training_hash(config_from_dict({"crop": {"frac": 0.3}})) == training_hash(config_from_dict({}))
    # the full config hash does see post-processing
    assert config_hash(config_from_dict({"tricks": ["crop", "gf"]})) != config_hash(base)


@pytest.mark.parametrize("flag,match", [
    ("optim.epochs=0", r"--set optim.epochs=0: optim.epochs: expected an integer ≥ 1, got 0"),
    ("optim.batch_size=0", r"optim.batch_size: expected an integer ≥ 1, got 0"),
    ("data.image_size=-32", r"data.image_size: expected an integer ≥ 1, got -32"),
    ("data.train.limit=0", r"data.train.limit: expected an integer ≥ 1"),
    ("optim.steps_per_epoch=-1", r"optim.steps_per_epoch: expected an integer ≥ 1"),
    ("data.num_workers=-1", r"data.num_workers: expected a number ≥ 0"),
    ("optim.lr=-1e-4", r"optim.lr: expected a number > 0"),
    ("crop.frac=1.5", r"crop.frac: expected a fraction in \(0, 1\]"),
    ("data.resize_short=32", r"data.resize_short: expected ≥ data.image_size \(56\), got 32"),
])
def test_out_of_range_sizes_are_refused_at_validation_naming_the_flag(flag, match):
    """Issue 11: optim.epochs=0 trained nothing and failed later with FileNotFoundError ... best.pt."""
    with pytest.raises(ConfigError, match=match):
        load_config(DEMO_CELL, flags=[flag])


@pytest.mark.parametrize("text,first,caret", [
    ("name: x\naxes:\n  a: b: c\n", "cell.yaml:3:7: could not parse YAML: mapping values are not allowed here",
     ["      a: b: c", "          ^"]),
    ("optim: {lr: [1, 2\nseed: 3\n", "cell.yaml:2:5: could not parse YAML: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence at 1:13)", ["    seed: 3", "        ^"]),
    ("optim: {lr: [1\n", "cell.yaml:2:1: could not parse YAML: expected ',' or ']', but got '<stream end>' "
     "(while parsing a flow sequence at 1:13)", []),  # nothing to point at past the end
    ("seed: \"\x01\"\n", "cell.yaml: could not parse YAML: unacceptable character #x0001: special characters "
     "are not allowed (character 8)", []),
])
def test_a_yaml_error_is_one_whole_line_then_the_caret(tmp_path, text, first, caret):
    """Issue: a YAML error printed PyYAML's 5 lines, the file name on the first and the problem on the fourth."""
    path = tmp_path / "cell.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).splitlines() == [f"{tmp_path / first}", *caret]


def test_a_set_flag_that_is_not_yaml_is_one_line_then_the_caret():
    with pytest.raises(ConfigError) as exc:
        set_flag_layers(["optim.betas=[0.9"])
    assert str(exc.value).splitlines() == [
        "--set 'optim.betas=[0.9': could not parse the value as YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at 1:1)", "    [0.9", "        ^"]


@pytest.mark.parametrize("text,flags,message", [
    ("tricks: [crop, gf, crop]\n", [], "{path}:1: tricks: 'crop' listed twice"),
    ("tricks: [crop]\n", ["tricks=[gf,gf]"], "--set tricks=[gf,gf]: tricks: 'gf' listed twice"),
    # issue 21: split and on_error typos passed validation and failed after torch was imported
    ("data:\n  train: {name: duts_tr, split: tset}\n", [],
     "{path}:2: data.train.split: expected a split of duts_tr (train, val), got 'tset'"),
    ("eval:\n  - {name: synthetic, split: test}\n  - name: synthetic\n    split: tst\n", [],
     "{path}:4: eval[1].split: expected a split of synthetic (train, val, test), got 'tst'"),
    ("seed: 0\n", ["data.val={name: synthetic, split: vla}"],
     "--set data.val={{name: synthetic, split: vla}}: data.val.split: expected a split of synthetic "
     "(train, val, test), got 'vla'"),
    ("data:\n  train:\n    name: synthetic\n    on_error: skp\n", [],
     "{path}:4: data.train.on_error: expected raise or skip, got 'skp'"),
    ("seed: 0\n", ["data.train.on_error=Skip"], "--set data.train.on_error=Skip: data.train.on_error: expected raise "
                                                "or skip, got 'Skip'"),
])
def test_a_bad_value_is_refused_naming_the_layer(tmp_path, text, flags, message):
    """Issues 19 and 21: a trick listed twice was accepted (and filtered twice); split and on_error typos
    failed after torch was imported, as a missing dataset."""
    path = tmp_path / "cell.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, flags=flags)
    assert str(exc.value) == message.format(path=path)


def test_a_top_level_unknown_key_from_a_flag_is_one_clean_line():
    with pytest.raises(ConfigError) as exc:
        compose(set_flag_layers(["sed=1"]))
    assert str(exc.value).startswith("--set sed=1: unknown key(s) sed; valid keys: backbone, bf,")


def test_datasets_with_one_release_take_any_split_as_build_dataset_does():
    """The test sets and ``folder`` have one split and ignore ``split`` (table4 evaluates on
    ``{name: voc07}``, split train by default): config validation accepts what building accepts."""
    cfg = config_from_dict({"eval": [{"name": "voc07"}, {"name": "duts_te", "split": "test"},
                                     {"name": "folder", "root": "x", "split": "anything"}]})
    assert [r.split for r in cfg.eval] == ["train", "test", "anything"]


def test_a_split_typo_is_refused_without_importing_torch_or_the_datasets(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("data:\n  val: {name: duts_tr, split: validation}\n")
    code = ("import sys; from segtricks.config.schema import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1])\nexcept ConfigError as exc:\n    print(exc)\n"
            "print(sorted(m for m in ('torch', 'segtricks.data.datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [
        f"{path}:2: data.val.split: expected a split of duts_tr (train, val), got 'validation'", "[]"], done.stderr


def test_config_errors_are_bad_input():
    assert issubclass(ConfigError, BadInput) and issubclass(ConfigError, ValueError)


def test_one_schema_check_names_the_first_unknown_key_for_its_line(tmp_path):
    with pytest.raises(ConfigError) as exc:
        check_keys({"name": 1, "zeta": 2, "alpha": 3}, ("name", "set"), "axes.a[0]")
    assert (str(exc.value), exc.value.key) == ("axes.a[0]: unknown key(s) alpha, zeta; valid keys: name, set",
                                               "axes.a[0].alpha")
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\nset:\n  optim:\n    lr: 1\n  seed: 2\neval:\n  - name: a\n    split: b\n")
    file = read_yaml_file(path)
    assert [file.where(k) for k in ("set.optim.lr", "set.optim.nope", "eval[0].split", "nope")] == \
        [f"{path}:4", f"{path}:4", f"{path}:8", str(path)]
    layer = file.layer("set", file.data["set"])
    assert (layer.where("optim.lr"), layer.where("seed"), layer.where("tricks")) == \
        (f"{path}:4", f"{path}:5", f"{path}:3")  # a key it does not set: the mapping's own line


def test_a_key_under_a_null_section_is_one_error_naming_who_made_it_null():
    """``--set data.val.limit=16`` on a cell whose ``data.val`` is null (FOUND's cells): was a TypeError."""
    from segtricks.config.schema import ConfigError, Layer, compose
    with pytest.raises(ConfigError) as err:
        compose([Layer({"data": {"val": None}}, "cell.yaml"), Layer({"data.val.limit": 16}, "--set data.val.limit=16")])
    said = str(err.value)
    assert said.startswith("--set data.val.limit=16: data.val.limit: data.val is null") and "set by cell.yaml" in said
    assert err.value.key == "data.val.limit"
