"""``python -m segtricks.cache ls|rm`` on caches built by the evaluation itself: what is listed, what
each selector removes, that a removed cache is rebuilt with the same numbers, and the usage errors."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import DEMO_CELL, REPO
from segtricks.evaluation import prediction_cache
from segtricks.cache import main
from segtricks.evaluation.cache_files import scan
from segtricks.files import HOST
from segtricks.config.schema import DatasetRef, load_config
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.engine.training import Training


REF = DatasetRef("synthetic", split="test", limit=8)
TINY = {"optim.epochs": 1, "optim.steps_per_epoch": 1, "optim.batch_size": 4, "data.train.limit": 8,
        "data.val.limit": 4, "tricks": []}


def evaluate(training: Training, root: Path) -> dict:
    return evaluate_model(training.model(), training.cfg, REF, with_structure=False, progress=False,
                          cache_dir=training.dir / "predictions", keys_dir=root / "keys").results()


def trainings_in(root: Path):
    """The two tiny trainings (seeds 0 and 1) of the demo backbone in output root ``root``."""
    return [Training.in_root(load_config(DEMO_CELL, {**TINY, "seed": seed}), root) for seed in (0, 1)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An output root whose caches the evaluation built: two trainings' masks, one backbone's keys."""
    root = tmp_path_factory.mktemp("built") / "outputs"
    results = {}
    for training in trainings_in(root):
        training.run()
        results[training.hash] = evaluate(training, root)
    return root, results


@pytest.fixture
def root(built, in_tmp):
    """A copy of the built output root in a scratch working directory (no MLflow store there)."""
    shutil.copytree(built[0], in_tmp / "outputs")
    return in_tmp / "outputs"


def hashes(root):
    return [t.hash for t in trainings_in(root)]


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".npy", ".json", ".tmp")
                  and p.parent.name in ("keys", "predictions"))


def test_ls_lists_every_cache_with_what_it_belongs_to_and_its_bytes(root, capsys):
    a, b = (h[:16] for h in hashes(root))
    caches = scan(root)
    assert sorted((c.kind, c.training) for c in caches) == sorted([("keys", None), ("masks", a), ("masks", b)])
    for c in caches:
        assert c.backbone == "demo_vit4" and c.weights == "random-init" and c.dataset == "synthetic/test/8"
        assert c.size == 56 and c.protocol == "ours" and c.rows == 8 and not c.partial
        assert c.nbytes == sum(p.stat().st_size for p in c.files) and len(c.files) == 2
    about = json.loads(next((root / "keys").glob("*.json")).read_text())
    assert about["kind"] == "keys" and about["size"] == 56 and about["protocol"] == "ours"
    assert about["dataset"] == {"name": "synthetic", "split": "test", "limit": 8, "root": None}
    masks = json.loads(next((root / "trainings" / a / "predictions").glob("*.json")).read_text())
    assert masks["kind"] == "masks" and Path(masks["training"]).name == a and masks["precision"] == "fp32"
    assert time.time() - masks["created"] < 3600 and len(masks["present"]) == masks["rows"] == 8
    assert main(["ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["kind", "backbone", "dataset", "px", "protocol", "rows", "MB", "age", "training", "grids"]
    assert out[1].split()[:6] == ["keys", "demo_vit4", "synthetic/test/8", "56", "ours", "8"]
    assert {line.split()[8] for line in out[2:4]} == {a, b} and all(line.split()[-1] == "?" for line in out[1:4])
    total = sum(c.nbytes for c in caches)
    assert out[4] == f"total: 3 caches under outputs, {total / 1e6:.1f} MB ({total} bytes)"
    assert out[5] == f"grids: ? (no MLflow store {root.parent / 'mlflow.db'}; --tracking-uri names another)"
    assert not (root.parent / "mlflow.db").exists()  # ls never creates a store


def test_a_cache_whose_json_predates_the_description_is_listed_from_its_name_and_folder(root):
    for meta in root.rglob("*.json"):
        if meta.parent.name in ("keys", "predictions"):
            meta.write_text(json.dumps({"present": json.loads(meta.read_text())["present"]}))
    caches = scan(root)
    assert sorted(c.kind for c in caches) == ["keys", "masks", "masks"]
    for c in caches:  # keys: backbone from the file name; masks: from the training's config.yaml
        assert (c.backbone, c.dataset, c.size, c.protocol, c.rows) == ("demo_vit4", "synthetic/test/8", 56, "ours", 8)
        assert abs(c.created - c.files[-1].stat().st_mtime) < 1e-6


def test_rm_training_removes_only_that_trainings_masks(root, capsys):
    a, b = (h[:16] for h in hashes(root))
    before = files(root)
    assert main(["rm", "--training", a[:6]]) == 0
    out = capsys.readouterr().out.splitlines()
    gone = [f for f in before if f.startswith(f"trainings/{a}/")]
    assert len(gone) == 2 and files(root) == [f for f in before if f not in gone]
    assert out[0].startswith(f"removed masks demo_vit4 synthetic/test/8 56px ours of training {a}: ")
    assert out[-1].startswith("removed 1 of 1 matching, freed ")
    assert (root / "trainings" / a / "best.pt").is_file()  # checkpoints are not touched


def test_removed_caches_are_rebuilt_with_identical_metrics(built, root, capsys):
    first = trainings_in(root)[0]
    assert main(["rm", "--kind", "keys"]) == 0 and main(["rm", "--training", first.hash]) == 0
    assert not list((root / "keys").iterdir()) and not list((first.dir / "predictions").iterdir())
    assert evaluate(first, root) == built[1][first.hash]  # the model and the backbone ran again
    assert sorted(c.kind for c in scan(root)) == ["keys", "masks", "masks"]


def test_rm_kind_keys_keeps_the_masks(root, capsys):
    before = files(root)
    assert main(["rm", "--kind", "keys", "--backbone", "demo_vit4"]) == 0
    assert files(root) == [f for f in before if not f.startswith("keys/")] and len(before) - len(files(root)) == 2


def test_rm_older_than_reads_the_created_time_or_else_the_mtime(root, capsys):
    a, b = (h[:16] for h in hashes(root))
    old_masks = next((root / "trainings" / a / "predictions").glob("*.json"))
    about = json.loads(old_masks.read_text())
    old_masks.write_text(json.dumps({**about, "created": time.time() - 8 * 86400}))
    keys_meta = next((root / "keys").glob("*.json"))  # an old-style .json: its age is the file's
    keys_meta.write_text(json.dumps({"present": about["present"]}))
    three_days_ago = time.time() - 3 * 86400
    for path in (root / "keys").iterdir():
        os.utime(path, (three_days_ago, three_days_ago))
    assert main(["rm", "--older-than", "7d", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("would remove 1 of 1 matching, would free ")
    assert main(["rm", "--older-than", "7d"]) == 0
    assert [c.training for c in scan(root) if c.kind == "masks"] == [b]
    assert main(["rm", "--older-than", "48h"]) == 0
    assert [(c.kind, c.training) for c in scan(root)] == [("masks", b)]
    assert main(["rm", "--older-than", "30m"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "nothing to remove: no cache under outputs matches"


def test_partial_files_of_dead_writers_go_and_live_or_unknown_writers_stay(root, capsys):
    keys = root / "keys"
    name = next(keys.glob("*.npy")).name
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    partial = {"dead": keys / f".{name}.{HOST}.{int(dead.stdout)}.tmp",
               "live": keys / f".{name}.{HOST}.{os.getpid()}.tmp",
               "elsewhere": keys / f".{name}.node-7.cluster.{int(dead.stdout)}.tmp",
               "old style": keys / f".{name}.{int(dead.stdout)}.tmp"}
    for path in partial.values():
        path.write_bytes(b"\0" * 1000)
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    live = partial["live"].relative_to(root.parent)
    assert f"partial  {live}  0.0 MB  0s  its writer (pid {os.getpid()}) is running" in out.splitlines()
    assert f"written on host node-7.cluster (pid {int(dead.stdout)}), which cannot be checked from here" in out
    assert "total: 3 caches and 4 partial files under outputs" in out
    assert main(["rm", "--kind", "keys"]) == 0
    out = capsys.readouterr().out
    assert partial["live"].exists() and partial["elsewhere"].exists()
    assert not partial["dead"].exists() and not partial["old style"].exists() and not list(keys.glob("*.npy"))
    assert out.splitlines()[-1].startswith("removed 3 of 5 matching, freed ") and "; 2 partial files kept;" in out


@pytest.mark.parametrize("argv, line", [
    (["rm"], "error: rm needs a selector: --grid, --training, --backbone, --older-than or --kind, or --all "
             "for every cache (--dry-run shows what would go)"),
    (["rm", "--all", "--kind", "keys"], "error: --all removes every cache; drop it to remove only what --kind selects"),
    (["rm", "--kind", "weights"], "error: argument --kind: invalid choice: 'weights' (choose from 'masks', 'keys') "
                                  "(python -m segtricks.cache rm --help)"),
    (["rm", "--older-than", "7 days"], "error: argument --older-than: '7 days' is not an age: give a number and a "
                                       "unit, e.g. 7d, 12h or 30m (python -m segtricks.cache rm --help)"),
    (["rm", "--training", "xyz"], "error: argument --training: 'xyz' is not a training hash (hexadecimal digits, "
                                  "e.g. from cache ls) (python -m segtricks.cache rm --help)"),
    (["rm", "--training", "ffffffff"], "error: --training ffffffff: no training under outputs/trainings starts so "
                                       "(python -m segtricks.cache ls shows the trainings with caches)"),
    (["rm", "--backbone", "dino_vits9"], "error: --backbone dino_vits9: no cache or training under outputs uses it "
                                         "(backbones there: demo_vit4)"),
    (["rm", "--grid", "table3"], "error: --grid needs the MLflow store that ran the grid: no MLflow store "
                                 "{cwd}/mlflow.db; --tracking-uri names another"),
    (["rm", "--colour", "red"], "error: unrecognized arguments: --colour red (python -m segtricks.cache --help)"),
])
def test_usage_errors_are_one_line_and_remove_nothing(root, capsys, argv, line):
    before = files(root)
    assert exit_code(argv) == 2
    assert capsys.readouterr().err.splitlines() == [line.format(cwd=root.parent)]
    assert files(root) == before and not (root.parent / "mlflow.db").exists()


def exit_code(argv) -> int:
    """main's status, whether returned or raised by argument parsing."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_ls_on_a_missing_or_empty_output_root_says_so_and_creates_nothing(in_tmp, capsys):
    assert main(["ls", "--output-root", "nowhere"]) == 0
    assert capsys.readouterr().out == "no caches: output root nowhere does not exist (--output-root names another)\n"
    (in_tmp / "outputs" / "trainings").mkdir(parents=True)
    assert main(["ls"]) == 0 and main(["rm", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["no caches under outputs",
                                                        "nothing to remove: no cache under outputs matches"]
    assert sorted(p.name for p in in_tmp.rglob("*")) == ["outputs", "trainings"]


def store_with_grids(path: Path, hash_a: str, hash_b: str) -> str:
    """A tracking store whose runs are tagged as grid_runner.cell_tags and a study's trials tag them."""
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    for grid, training in (("table3", hash_a), ("table3", hash_a), ("table4", hash_b)):
        exp = client.get_experiment_by_name(grid)
        exp_id = exp.experiment_id if exp else client.create_experiment(grid)
        client.create_run(exp_id, tags={"grid": grid, "cell": "c", "training_hash": training, "backbone": "demo_vit4"})
    study = client.create_experiment("study_demo")
    client.create_run(study, tags={"study": "demo", "trial": "0", "training_hash": hash_b})
    client.create_run(study, tags={"study": "demo"})  # the study's parent run: no training
    return uri


def test_ls_shows_the_grids_of_each_cache_and_rm_grid_removes_what_a_grid_uses(root, capsys):
    hash_a, hash_b = hashes(root)
    uri = store_with_grids(root.parent / "runs.db", hash_a, hash_b)
    assert main(["ls", "--tracking-uri", uri]) == 0
    grids = {(c.split()[0], c.split()[8]): c.split(maxsplit=9)[-1] for c in capsys.readouterr().out.splitlines()[1:4]}
    assert grids == {("keys", "-"): "study:demo, table3, table4", ("masks", hash_a[:16]): "table3",
                     ("masks", hash_b[:16]): "study:demo, table4"}
    assert exit_code(["rm", "--grid", "table5", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == ("error: --grid table5: no run in the MLflow store is tagged grid=table5 "
                                       "(grids there: study:demo, table3, table4)\n")
    assert main(["rm", "--grid", "table3", "--kind", "masks", "--tracking-uri", uri]) == 0
    assert sorted((c.kind, c.training) for c in scan(root)) == [("keys", None), ("masks", hash_b[:16])]
    assert main(["rm", "--grid", "study:demo", "--tracking-uri", uri]) == 0
    assert scan(root) == []


def test_ls_imports_no_torch_and_mlflow_only_for_an_existing_store(root):
    code = ("import sys; from segtricks.cache import main; rc = main(['ls', *sys.argv[1:]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('mlflow' in sys.modules); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    bare = subprocess.run([sys.executable, "-c", code], cwd=root.parent, env=env, capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.splitlines()[-1] == "False" and not (root.parent / "mlflow.db").exists()
    hash_a, hash_b = hashes(root)
    uri = store_with_grids(root.parent / "mlflow.db", hash_a, hash_b)
    with_store = subprocess.run([sys.executable, "-c", code, "--tracking-uri", uri], cwd=root.parent, env=env,
                                capture_output=True, text=True, timeout=120)
    assert with_store.returncode == 0, with_store.stderr
    assert with_store.stdout.splitlines()[-1] == "True" and "table3" in with_store.stdout


def test_a_cache_removed_while_an_evaluation_opens_it_is_recomputed(built, root, monkeypatch):
    """Before: the evaluation checked that both files existed, then loaded them; a cache removed in
    between (cache rm, or another process replacing a stale cache) raised FileNotFoundError."""
    training = trainings_in(root)[0]
    real_load = prediction_cache.np.load

    def load_after_removal(path, *args, **kwargs):
        Path(path).unlink()  # cache rm runs between the evaluation's look and its load
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(prediction_cache.np, "load", load_after_removal)
    results = evaluate(training, root)
    monkeypatch.undo()
    assert results == built[1][training.hash]
    assert sorted(c.kind for c in scan(root)) == ["keys", "masks", "masks"]  # both rebuilt
