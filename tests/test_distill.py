"""Distillation cells (issue 31): a student trained on its teacher cell's pseudo-masks, exported once per
(teacher, dataset, threshold) at each image's size through the teacher's post-processing."""
import numpy as np
import pytest
import torch

from helpers import DEMO_CELL, grid_runs, pngs_of
from segtricks.config.grid import read_grid
from segtricks.config.schema import ConfigError, DatasetRef, config_hash
from segtricks.data.datasets import build_dataset
from segtricks.data.pseudo_masks import PseudoLabelled, PseudoMaskFolder, training_set
from segtricks.runners.plan import Action, group_key, load_grid, ordered, plan

STUDENT = ("{method: selfmask, tricks: [], distill.teacher: %s, data.train: {name: synthetic, split: train, "
           "limit: 6}, data.val: null, optim.epochs: 1, optim.steps_per_epoch: 2, optim.batch_size: 3, "
           "selfmask.queries: 3, selfmask.decoder_layers: 1}")


def write(tmp_path, cells, name="d"):
    """A grid over the demo cell cut to seconds (teachers: 2 steps; evaluation: 4 test images) with one
    axis ``cell`` of (name, set) entries."""
    lines = [f"name: {name}", f"base: {DEMO_CELL}",
             "set: {optim.epochs: 1, optim.steps_per_epoch: 2, data.train.limit: 8, data.val.limit: 4,",
             "      eval: [{name: synthetic, split: test, limit: 4}]}", "axes:", "  cell:"]
    lines += [f"    - {{name: {n}, set: {s}}}" for n, s in cells]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_without_a_teacher_no_hash_sees_the_section(tmp_path):
    from segtricks.config.schema import config_from_dict
    from segtricks.engine.training import training_hash
    plain = config_from_dict({"backbone": {"name": "demo_vit4"}})
    moved = config_from_dict({"backbone": {"name": "demo_vit4"}, "distill": {"threshold": 0.7, "masks": "x"}})
    assert config_hash(plain) == config_hash(moved) and training_hash(plain) == training_hash(moved)


def test_the_student_hashes_its_teachers_config_not_its_name(tmp_path):
    def student_hashes(teacher_name, teacher_lr):
        grid = load_grid(str(write(tmp_path, [(teacher_name, "{tricks: [], optim.lr: %s}" % teacher_lr),
                                              ("student", STUDENT % teacher_name)])), output_root=str(tmp_path))
        student = grid.cells[1]
        assert student.teacher is grid.cells[0] and student.cfg.distill.teacher_hash == grid.cells[0].config_hash
        return student.config_hash, student.training_hash, student.cfg.distill.masks

    first = student_hashes("sempart", 1.0e-3)
    assert student_hashes("renamed", 1.0e-3)[:2] == first[:2]  # a renamed teacher is the same teacher
    other = student_hashes("sempart", 2.0e-3)
    assert other[0] != first[0] and other[1] != first[1] and other[2] != first[2]


def test_two_students_of_one_teacher_share_its_export_and_its_group(tmp_path):
    grid = load_grid(str(write(tmp_path, [("teacher", "{tricks: [crop, gf]}"), ("a", STUDENT % "teacher"),
                                          ("b", STUDENT.replace("queries: 3", "queries: 2") % "teacher")])),
                     output_root=str(tmp_path))
    teacher, a, b = grid.cells
    assert a.cfg.distill.masks == b.cfg.distill.masks and a.training_hash != b.training_hash
    assert group_key(a) == group_key(b) == group_key(teacher)  # one Slurm task runs the teacher, then them
    assert [c.name for c in ordered(grid.cells)] == ["teacher", "a", "b"]  # the teacher's gf does not put it last


@pytest.mark.parametrize("cells, message", [
    ([("s", STUDENT % "t"), ("t", "{tricks: []}")], "is not a cell listed before it (cells before it: none)"),
    ([("t", "{tricks: []}"), ("s", STUDENT.replace("method: selfmask", "method: sempart") % "t")],
     "method 'sempart' does not learn from masks"),
    ([("t", "{tricks: [], maps: somewhere}"), ("s", STUDENT % "t")], "scores precomputed maps"),
])
def test_a_bad_teacher_is_one_error_naming_the_cell(tmp_path, cells, message):
    with pytest.raises(ConfigError, match="cell s\\): distill.teacher 't'") as err:
        read_grid(str(write(tmp_path, cells)))
    assert message in str(err.value)


def test_the_student_waits_while_another_worker_holds_its_teacher(tmp_path):
    from types import SimpleNamespace
    from segtricks.tracking import claims, tags
    grid = load_grid(str(write(tmp_path, [("t", "{method: tokencut, tricks: []}"), ("s", STUDENT % "t")])),
                     output_root=str(tmp_path))
    teacher, student = grid.cells
    live = SimpleNamespace(info=SimpleNamespace(status="RUNNING", run_id="r" * 32, start_time=0),
                           data=SimpleNamespace(tags={tags.HEARTBEAT: str(__import__("time").time()),
                                                      tags.WORKER: "w"}))
    assert claims.is_live(live)
    steps = {s.cell.name: s for s in plan(grid, {teacher.config_hash: [live]}, False, False)}
    assert steps["t"].action is Action.WAIT and steps["s"].action is Action.WAIT
    assert "waits for its teacher t" in steps["s"].reason
    steps = {s.cell.name: s for s in plan(grid, {}, False, False)}
    assert steps["t"].action is Action.EVALUATE_METHOD and steps["s"].action is Action.TRAIN


def test_a_student_outside_a_grid_is_told_to_run_it_through_ablate(tmp_path):
    from helpers import tiny_config
    cfg = tiny_config(tmp_path, {"method": "selfmask", "distill.teacher": "t"})
    with pytest.raises(ConfigError, match="names a cell of a grid.*segtricks.ablate"):
        training_set(cfg)


def exported(tmp_path, teacher_tricks="[gf]", monkeypatch=None, fail_after=None):
    """A tokencut teacher (trains nothing: an export in seconds) with ``teacher_tricks``, exported on
    6 synthetic training images: (teacher cell, student cell, folder, record or the exception)."""
    from segtricks.inference.pseudo_labels import export_pseudo_masks
    grid = load_grid(str(write(tmp_path, [("t", "{method: tokencut, tricks: %s}" % teacher_tricks),
                                          ("s", STUDENT % "t")])), output_root=str(tmp_path))
    teacher, student = grid.cells
    folder = PseudoMaskFolder(__import__("pathlib").Path(student.cfg.distill.masks))
    if fail_after is not None:
        real, written = PseudoMaskFolder.write_mask, []

        def write_then_die(self, item_id, mask):
            if len(written) == fail_after:
                raise KeyboardInterrupt  # a kill between two masks
            written.append(item_id)
            real(self, item_id, mask)

        monkeypatch.setattr(PseudoMaskFolder, "write_mask", write_then_die)
    try:
        record = export_pseudo_masks("t", teacher.cfg, None, student.cfg.data.train, 0.5, folder, torch.device("cpu"))
    except KeyboardInterrupt as exc:
        record = exc
    return teacher, student, folder, record


def test_the_export_is_the_teachers_post_processed_mask_at_each_images_size(tmp_path):
    from segtricks.inference.predictor import Predictor
    teacher, student, folder, record = exported(tmp_path)
    raw = build_dataset(student.cfg.data.train)
    assert record["masks"] == record["items"] == len(raw) == 6 and record["teacher"] == "t"
    masks = pngs_of(folder.dir)
    expected = Predictor(None, teacher.cfg, ["gf"], "cpu").predict([np.asarray(raw.load(i).image) for i in range(6)])
    unfiltered = Predictor(None, teacher.cfg, [], "cpu").predict([np.asarray(raw.load(0).image)])[0]
    assert not np.array_equal(unfiltered > 0.5, expected[0] > 0.5)  # GF changes the mask: the check can fail
    for i in range(6):
        mask = masks[raw.item_id(i)]
        assert mask.shape == np.asarray(raw.load(i).image).shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, expected[i] > 0.5)
    loaded = PseudoLabelled(raw, folder).load(2)  # what the student trains on: the export's mask, not the dataset's
    assert np.array_equal(loaded.mask, masks[raw.item_id(2)] == 255)


def test_a_killed_export_resumes_whole_and_a_complete_one_is_not_redone(tmp_path, monkeypatch):
    _, student, folder, died = exported(tmp_path, monkeypatch=monkeypatch, fail_after=2)
    assert isinstance(died, KeyboardInterrupt) and folder.completion() is None
    assert sorted(p.name for p in folder.dir.iterdir()) == ["train_00000.png", "train_00001.png"]  # no torn file
    with pytest.raises(Exception, match="the export is not complete"):
        PseudoLabelled(build_dataset(student.cfg.data.train), folder)
    monkeypatch.undo()
    kept = (folder.dir / "train_00000.png").stat().st_mtime_ns
    written = []
    monkeypatch.setattr(PseudoMaskFolder, "write_mask",
                        lambda self, i, m, real=PseudoMaskFolder.write_mask: (written.append(i), real(self, i, m)))
    *_, record = exported(tmp_path)
    assert written == [f"train_0000{i}" for i in range(2, 6)] and record["masks"] == 6
    assert (folder.dir / "train_00000.png").stat().st_mtime_ns == kept
    written.clear()
    *_, again = exported(tmp_path)
    assert written == [] and again == record


def test_a_distillation_grid_trains_the_student_on_its_teachers_masks(tmp_path, monkeypatch):
    """Sempart (2 steps) teaches a tiny SelfMask through ablate: the teacher first, the export, the
    student's run FINISHED with the pseudo-masks as a training input (their digest), scored; a rerun
    skips both; the export is not made twice."""
    from segtricks.ablate import main as ablate
    path = write(tmp_path, [("sempart", "{tricks: [gf]}"), ("student", STUDENT % "sempart")])
    monkeypatch.chdir(tmp_path)
    assert ablate(["--grid", str(path)]) == 0
    client, runs = grid_runs(tmp_path, "d")
    by_cell = {r.data.tags["cell"]: r for r in runs if "cell" in r.data.tags}
    assert {c: r.info.status for c, r in by_cell.items()} == {"sempart": "FINISHED", "student": "FINISHED"}
    assert by_cell["student"].info.start_time > by_cell["sempart"].info.end_time
    (export,) = (tmp_path / "outputs" / "pseudo_masks").iterdir()
    record = PseudoMaskFolder(export).completion()
    inputs = {i.dataset.name: i.dataset.digest for i in by_cell["student"].inputs.dataset_inputs}
    assert inputs["pseudo-masks of sempart on synthetic"] == record["digest"] and record["masks"] == 6
    assert by_cell["student"].data.metrics["synthetic.n_images"] == 4
    marker = export / "complete.json"
    before = marker.stat().st_mtime_ns
    assert ablate(["--grid", str(path)]) == 0
    assert marker.stat().st_mtime_ns == before and len(grid_runs(tmp_path, "d")[1]) == len(runs)


def test_a_teacher_trained_again_has_its_masks_exported_again(tmp_path, monkeypatch):
    """The export names the teacher's checkpoint: the same checkpoint keeps it, a new one (the teacher's
    folder removed and trained again) exports every mask again; an unfinished teacher is one error."""
    import os
    from segtricks.inference.pseudo_labels import export_pseudo_masks
    grid = load_grid(str(write(tmp_path, [("t", "{tricks: []}"), ("s", STUDENT % "t")])), output_root=str(tmp_path))
    teacher, student = grid.cells
    folder = PseudoMaskFolder(__import__("pathlib").Path(student.cfg.distill.masks))

    def export():
        return export_pseudo_masks("t", teacher.cfg, teacher.training, student.cfg.data.train, 0.5, folder,
                                   torch.device("cpu"))

    with pytest.raises(RuntimeError, match="teacher cell t: its training is absent"):
        export()
    teacher.training.run()
    written = []
    monkeypatch.setattr(PseudoMaskFolder, "write_mask",
                        lambda self, i, m, real=PseudoMaskFolder.write_mask: (written.append(i), real(self, i, m)))
    first = export()
    assert len(written) == 6 and export() == first and len(written) == 6
    best = teacher.training.best_path
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))  # a new best.pt
    again = export()
    assert len(written) == 12 and again["teacher_model"] != first["teacher_model"]
