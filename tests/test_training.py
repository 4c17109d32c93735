"""One training as one object: status from its small file, no rebuild when complete, tricks as plug-ins."""
import ast
import json
from pathlib import Path

import pytest
import torch

from helpers import DEMO_CELL, REPO, TINY_FLAGS, tiny_config
from segtricks.engine import checkpoint
from segtricks.models import model as model_module
from segtricks.ablate import main as ablate
from segtricks.engine.loop import Hook
from segtricks.runtime.device import FP32
from segtricks.engine.loop import loss_terms
from segtricks.engine.training import State, Training
from segtricks.method.tricks import TRICKS, TrainingTrick



def tiny(tmp_path, epochs=2, **top):
    return tiny_config(tmp_path / "run", {"optim.epochs": epochs, **top})


class Stop(Exception):
    pass


class StopAfterFirstEpoch(Hook):
    def after_epoch(self, state, metrics):
        raise Stop


def test_status_absent_partial_complete_and_corrupt(tmp_path):
    training = Training(tiny(tmp_path))
    assert training.status().state is State.ABSENT
    with pytest.raises(Stop):
        training.run([StopAfterFirstEpoch()])
    status = training.status()
    assert status.state is State.PARTIAL and status.epochs_done == 1 and str(status) == "partial at epoch 1/2"
    training.run()
    status = training.status()
    assert status.state is State.COMPLETE and status.epochs_done == 2 and status.weights_id == "random-init"
    info = json.loads(training.status_path.read_text())
    assert info["files"]["last.pt"] == training.last_path.stat().st_size and len(info["history"]) == 2
    # a longer budget turns the complete training into a partial one that continues
    assert Training(tiny(tmp_path, epochs=3)).status().state is State.PARTIAL
    # a truncated last.pt is never complete: corrupt, naming the file
    data = training.last_path.read_bytes()
    training.last_path.write_bytes(data[:5000])
    status = training.status()
    assert status.state is State.CORRUPT and str(training.last_path) in status.problem


def test_corrupt_training_is_set_aside_and_trains_again(tmp_path, capsys):
    training = Training(tiny(tmp_path))
    training.run()
    expected = training.history()
    training.last_path.write_bytes(training.last_path.read_bytes()[:5000])  # truncate -s 5000
    assert training.run().state is State.COMPLETE
    assert (training.dir / "last.pt.corrupt").stat().st_size == 5000  # kept for inspection
    assert f"{training.last_path} does not load" in capsys.readouterr().out
    assert training.history() == expected  # from scratch, deterministically the same training


def test_status_reads_the_small_file_not_the_weights(tmp_path, monkeypatch):
    training = Training(tiny(tmp_path, epochs=1))
    training.run()
    loads = []
    monkeypatch.setattr(checkpoint, "load", lambda path: loads.append(path))
    assert training.status().state is State.COMPLETE and loads == []


def test_status_is_rebuilt_when_a_kill_left_it_behind_the_checkpoints(tmp_path):
    training = Training(tiny(tmp_path))
    training.run()
    info = json.loads(training.status_path.read_text())
    training.status_path.write_text(json.dumps({**info, "epochs_done": 1, "files": {"last.pt": 1, "best.pt": 1}}))
    assert training.status().state is State.COMPLETE  # last.pt loads: status.json rewritten from it
    training.status_path.unlink()
    assert training.status().state is State.COMPLETE  # a folder written before status.json existed


@pytest.mark.slow
def test_evaluation_only_cell_builds_no_trainer_and_loads_the_weights_once(in_tmp, monkeypatch):
    common = [*TINY_FLAGS, "--set", "optim.epochs=1", "--set", "optim.steps_per_epoch=1"]
    first = in_tmp / "first.yaml"
    first.write_text(f"name: first\nbase: {DEMO_CELL}\naxes:\n  tricks:\n    - {{name: base, set: {{tricks: []}}}}\n")
    assert ablate(["--grid", str(first), *common]) == 0
    counts = {"train_view": 0, "adamw": 0, "best_loads": 0}

    def counting(name, real):
        def wrapped(*a, **k):
            counts[name] += 1
            return real(*a, **k)
        return wrapped

    from segtricks.methods.sempart import SempartRecipe
    monkeypatch.setattr(SempartRecipe, "train_view", counting("train_view", SempartRecipe.train_view))
    monkeypatch.setattr(torch.optim, "AdamW", counting("adamw", torch.optim.AdamW))
    real_load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load",
                        lambda path: (counts.__setitem__("best_loads", counts["best_loads"] + (Path(path).name == "best.pt")),
                                      real_load(path))[1])
    second = in_tmp / "second.yaml"  # the same training, post-processed: evaluation only
    second.write_text(f"name: second\nbase: {DEMO_CELL}\naxes:\n  tricks:\n    - {{name: gf, set: {{tricks: [gf]}}}}\n"
                      f"    - {{name: bf, set: {{tricks: [bf]}}}}\n")
    assert ablate(["--grid", str(second), *common]) == 0
    assert counts == {"train_view": 0, "adamw": 0, "best_loads": 1}


class MeanMask(TrainingTrick):
    """Test trick: the mean of the fine mask as a loss term (pulls masks towards background)."""

    name = "mean_mask"

    def extra_terms(self, step):
        return {"mean_mask": step.outputs["fine"].float().mean()}

    def loss_weights(self, cfg):
        return {"mean_mask": 0.5}


def test_a_training_trick_registered_elsewhere_adds_its_term_without_trainer_edits(tmp_path, monkeypatch):
    monkeypatch.setattr(TRICKS, "_entries", dict(TRICKS._entries))  # registered for this test only
    TRICKS.register("mean_mask")(MeanMask())
    cfg = tiny(tmp_path, epochs=1, tricks=["mean_mask", "gf"])
    m = model_module.build_model(cfg)
    terms = loss_terms(m, torch.rand(2, 3, 32, 32), cfg, torch.Generator().manual_seed(0), FP32)
    assert set(terms) == {"ncut", "fine_tv", "coarse_tv", "consistency", "mean_mask"}
    training = Training(cfg)
    training.run()
    assert "train.mean_mask" in training.history()[0]
    assert training.hash != Training(tiny(tmp_path, epochs=1, tricks=["gf"])).hash  # a training trick counts


CLI_MODULES = {"segtricks.train", "segtricks.evaluate", "segtricks.ablate", "segtricks.tune", "analysis.make_tables"}
TRICK_IMPLEMENTATIONS = {"segtricks.method.tricks", "segtricks.method.guided_filter", "segtricks.method.bilateral_solver",
                         "segtricks.method.crop_consistency"}


def imports_of(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_import_graph():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for d in ("segtricks", "analysis") for p in (REPO / d).rglob("*.py")}
    assert len(modules) > 20
    for name, path in modules.items():
        if name in CLI_MODULES:
            continue
        assert not imports_of(path) & CLI_MODULES, f"library module {name} imports a CLI module"
    assert not imports_of(modules["segtricks.config.schema"]) & TRICK_IMPLEMENTATIONS
