"""Bad input to every command: one line naming the flag or file and the fix, the documented exit
code, and nothing written (issue 28's rough edges, each as it was reproduced)."""
import errno
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from helpers import REPO, store_client, tiny_config
from segtricks import errors, segment
from segtricks.ablate import main as ablate
from segtricks.engine.training import Training
from segtricks.evaluate import main as evaluate
from segtricks.tune import main as tune

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of a machine without CUDA")


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """A finished tiny training (seconds)."""
    t = Training(tiny_config(tmp_path_factory.mktemp("training") / "training"))
    t.run()
    return t


def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.png")
    return folder


def one_line(capsys, start: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@NO_CUDA
def test_a_device_this_machine_lacks_is_refused_before_any_run(in_tmp, capsys):
    """Before: --device cuda passed --dry-run and the preflight, then made 4 FAILED runs."""
    line = "error: --device cuda: this machine has no CUDA device (torch sees none); use auto or cpu"
    for argv in (["--grid", "demo", "--dry-run"], ["--grid", "demo"]):
        assert ablate([*argv, "--device", "cuda"]) == 2
        assert capsys.readouterr().err.splitlines() == [line]
    assert tune(["--study", "demo", "--device", "cuda:1"]) == 2
    one_line(capsys, "error: --device cuda:1: this machine has no CUDA device")
    assert ablate(["--grid", "demo", "--dry-run", "--set", "device=cuda"]) == 2
    one_line(capsys, "error: the config's device: cuda: this machine has no CUDA device")
    assert ablate(["--grid", "demo", "--dry-run", "--device", "gpu"]) == 2
    one_line(capsys, "error: --device gpu: not a device name; use auto, cpu, cuda or cuda:N")
    assert sorted(p.name for p in in_tmp.iterdir()) == []  # no store, no run, no outputs


@NO_CUDA
def test_segment_on_a_device_this_machine_lacks_is_one_line(training, tmp_path, capsys):
    """Before: a traceback."""
    assert segment.main(["--run", str(training.dir), "--images", str(images(tmp_path)), "--out",
                         str(tmp_path / "out"), "--device", "cuda"]) == 2
    one_line(capsys, "error: --device cuda: this machine has no CUDA device")


def test_a_list_file_that_is_not_utf8_is_named(tmp_path, capsys):
    """Before: UnicodeDecodeError's traceback from evaluate and ablate --dry-run."""
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    split = voc / "ImageSets" / "Main" / "trainval.txt"
    split.write_bytes(b"000001\n\xff\xfe000002\n")
    assert evaluate(["--centre-prior", "--dataset", "voc07", "--root", str(tmp_path / "VOCdevkit")]) == 2
    err = one_line(capsys, f"error: dataset 'voc07': {split} is not UTF-8 text (byte 7: invalid start byte)")
    assert "replace it with the release's own file" in err


def test_segment_out_that_is_a_file_or_not_writable_is_one_line(training, tmp_path, monkeypatch, capsys):
    """Before: FileExistsError's and a read-only filesystem's tracebacks."""
    folder = images(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert segment.main(["--run", str(training.dir), "--images", str(folder), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"error: --out {afile}: is a file, not a folder; choose another --out\n"
    monkeypatch.setattr("tempfile.mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))  # a read-only mount, as the probe meets it
    out = tmp_path / "masks"
    assert segment.main(["--run", str(training.dir), "--images", str(folder), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --out {out}: cannot be created: {tmp_path} is not writable "
                                       f"(read-only filesystem); choose another --out\n")
    assert not out.exists()


def test_a_truncated_checkpoint_is_named_by_evaluate_and_segment(training, tmp_path, capsys):
    """Before: a RuntimeError traceback from torch.load (the README promised the file is named)."""
    import shutil
    folder = tmp_path / "damaged"
    shutil.copytree(training.dir, folder)
    best = folder / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    assert evaluate(["--run", str(folder), "--dataset", "synthetic", "--limit", "2"]) == 2
    err = one_line(capsys, f"error: checkpoint {best} does not load (")
    assert "train again (rerun the command that trained it), or restore the file" in err
    assert segment.main(["--run", str(folder), "--images", str(images(tmp_path)), "--out",
                         str(tmp_path / "out")]) == 2
    one_line(capsys, f"error: checkpoint {best} does not load (")


@pytest.mark.parametrize("flags, line", [
    (["--limit", "-1"], "error: --limit -1: give a positive number of images, or leave --limit out for all"),
    (["--limit", "0"], "error: --limit 0: give a positive number of images, or leave --limit out for all"),
    (["--out", "records.xlsx"], "error: --out records.xlsx: use a .csv or .parquet file name"),
])
def test_evaluate_refuses_its_flags_before_evaluating(in_tmp, monkeypatch, capsys, flags, line):
    """Before: --limit -1 scored all but one image, --limit 0 all of them, and --out x.xlsx was refused
    only after the whole evaluation ran."""
    monkeypatch.setattr("segtricks.evaluate.evaluate_maps", lambda *a, **k: pytest.fail("evaluated first"))
    assert evaluate(["--centre-prior", "--dataset", "synthetic", *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_tune_workers_without_slurm_is_refused(in_tmp, capsys):
    """Before: --workers 2 without --launcher slurm was ignored without a word."""
    assert tune(["--study", "demo", "--workers", "2"]) == 2
    one_line(capsys, "error: --workers 2 runs Slurm array tasks and needs --launcher slurm")
    assert not list(in_tmp.iterdir())


def test_tune_best_of_a_study_never_run_creates_nothing(in_tmp, capsys):
    """Before: --best created optuna.db and an empty study in it."""
    assert tune(["--study", "demo", "--best"]) == 2
    one_line(capsys, f"error: no study storage at {in_tmp / 'optuna.db'}: study 'demo' was never run there")
    assert not list(in_tmp.iterdir())
    storage = f"sqlite:///{in_tmp / 'other.db'}"
    optuna.create_study(storage=storage, study_name="another")
    assert tune(["--study", "demo", "--best", "--storage", storage]) == 2
    one_line(capsys, f"error: no study 'demo' in {storage} (studies there: another)")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["another"]


def test_run_id_prefixes_too_short_or_shared_list_the_candidates(in_tmp, capsys):
    """Before: ``segment --run 3`` said "no run with that id" although runs start with 3."""
    client = store_client(in_tmp)
    exp = client.create_experiment("grid")
    ids = [client.create_run(exp, tags={"cell": f"c{i}"}).info.run_id for i in range(20)]
    out = ["--images", str(images(in_tmp)), "--out", str(in_tmp / "out")]
    first = ids[0][0]
    matching = [i for i in ids if i.startswith(first)]
    assert segment.main(["--run", first, *out]) == 2
    err = one_line(capsys, f"error: run id {first} is too short to name a run ({len(matching)} run(s) start with it: ")
    assert all(i[:8] in err for i in matching[:5]) and "give at least 4 characters" in err
    unused = next(c for c in "0123456789abcdef" if not any(i.startswith(c) for i in ids))
    assert segment.main(["--run", unused, *out]) == 2
    one_line(capsys, f"error: --run {unused}: no run with that id (or id prefix)")
    shared = next((a, b) for a in ids for b in ids if a != b and a[:1] == b[:1])
    prefix = shared[0][:max(4, next(k for k in range(1, 32) if shared[0][:k] != shared[1][:k]) - 1)]
    if shared[1].startswith(prefix):  # two ids that share 4 digits: rare, but then it is ambiguous
        assert segment.main(["--run", prefix, *out]) == 2
        one_line(capsys, f"error: run id {prefix} is the start of ")


def test_skip_bad_warnings_are_one_line_without_python_source(tmp_path):
    """Before: under each skipped file's warning, Python printed ``warnings.warn(f"skipped: {exc}")``."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "good.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "masks" / "good.png")
    (root / "images" / "bad.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "bad.png")
    result = subprocess.run([sys.executable, "-m", "segtricks.evaluate", "--centre-prior", "--dataset", "folder",
                             "--root", str(root), "--skip-bad"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "bad.png" in line]  # (after the bar's \r, if any)
    assert len(said) == 1 and "warning: skipped: cannot read " in said[0], result.stderr
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_one_line_warnings_leave_other_warnings_as_python_prints_them():
    @errors.command
    def main(argv):
        warnings.warn("a segtricks warning", errors.SegtricksWarning)
        return 0

    with warnings.catch_warnings(record=True) as caught:  # recorders (pytest's) still see every warning
        warnings.simplefilter("always")
        assert main([]) == 0
    assert [str(w.message) for w in caught] == ["a segtricks warning"]
    assert warnings.formatwarning is errors._python_format_warning  # restored after the command


@pytest.mark.parametrize("module", ["segtricks.segment", "segtricks.evaluate", "analysis.make_tables",
                                    "segtricks.ablate", "segtricks.tune", "segtricks.train"])
def test_usage_lines_name_the_command_the_user_typed(module):
    """Before: ``usage: segment.py``, a file nobody typed."""
    result = subprocess.run([sys.executable, "-m", module, "--no-such-flag"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: python -m {module} "), result.stderr


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(capsys):
    @errors.command
    def main(argv):
        raise KeyboardInterrupt

    assert main([]) == 130
    assert capsys.readouterr().err == "\ninterrupted; rerun the same command to resume\n"


def test_a_database_store_that_does_not_answer_is_one_line_without_its_password(in_tmp, capsys):
    """A PostgreSQL tracking URI whose server is not there (port 1 refuses at once): ablate and tune say so
    in one line, exit 1, print no password, and tune leaves no optuna.db behind."""
    uri = "postgresql://someone:hunter2@127.0.0.1:1/mlflow"
    for command, args in ((ablate, ["--grid", "demo"]),
                          (tune, ["--study", str(REPO / "experiments" / "study_demo.yaml"), "--n-trials", "1"])):
        assert command([*args, "--tracking-uri", uri]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot be reached" in err and "Connection refused" in err, err
        assert "hunter2" not in err and "someone:***@127.0.0.1:1" in err
    assert not (in_tmp / "optuna.db").exists() and not (in_tmp / "mlflow.db").exists()
