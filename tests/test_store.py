"""The tracking store's first contact and its failure states (issue 11 defect 3 and its messages)."""
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segtricks import tracking
from segtricks.ablate import main as ablate

REPO = Path(__file__).resolve().parents[1]
OPEN_STORE = "import sys; from segtricks.tracking import Store; print(Store(sys.argv[1]).experiment('x'))"


def test_four_invocations_on_a_fresh_folder_share_one_store(tmp_path):
    """Before: three of four processes crashed in MLflow's schema migration (duplicate column,
    table already exists, alembic row mismatch)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # all four see the same experiment
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_kill_during_store_creation_leaves_no_half_created_store(tmp_path):
    """Before: a kill during the first-time schema creation left mlflow.db permanently unusable."""
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen([sys.executable, "-c", OPEN_STORE, f"sqlite:///{db}"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not [p for p in tmp_path.iterdir() if "mlflow.db" in p.name and
                                           not p.name.endswith(".lock")] and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(1.0)  # MLflow's migration takes seconds: kill in the middle of it
    assert proc.poll() is None, "the store was created before the kill"
    proc.kill()
    proc.wait()
    assert _reopen(db).experiment("x") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def _reopen(db: Path) -> tracking.Store:
    """A fresh first contact with ``db``, as a new process makes (MLflow caches stores per URI)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    return tracking.Store(f"sqlite:///{db}")


def _store(tmp_path) -> Path:
    db = tmp_path / "mlflow.db"
    tracking.Store(f"sqlite:///{db}").experiment("x")
    return db


def test_half_migrated_store_is_named_with_its_recovery(tmp_path):
    """The state a kill leaves inside MLflow's migration: revision 97727af70f4d's columns added, its
    version stamp not yet written (reopening it failed with `duplicate column name: creation_time`)."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db import utils
    db = tmp_path / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    utils.InitialBase.metadata.create_all(engine)  # what MLflow's _initialize_tables does first
    config = utils._get_alembic_config(f"sqlite:///{db}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "97727af70f4d")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'cc1f77228345'")  # the stamp one step behind
    engine.dispose()
    with pytest.raises(tracking.StoreError, match=rf"{db} is a half-created MLflow store .* holds no runs: "
                                                  rf"move it aside \(mv {db} {db}.broken\)"):
        _reopen(db)


def test_store_with_runs_at_an_older_schema_suggests_mlflow_db_upgrade(tmp_path):
    db = _store(tmp_path)
    store = tracking.Store(f"sqlite:///{db}")
    store.start(store.experiment("x"), "r", {})
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # an early MLflow revision
    with pytest.raises(tracking.StoreError, match=rf"{db} holds 1 runs .* mlflow db upgrade sqlite:///{db}"):
        _reopen(db)


def _grid(tmp_path) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nbase: {REPO / 'experiments' / 'demo_cell.yaml'}\naxes:\n  tricks:\n"
                    f"    - {{name: a, set: {{tricks: []}}}}\n")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_file_that_is_not_a_database_is_one_line(in_tmp, capsys):
    (in_tmp / "mlflow.db").write_bytes(b"these are notes, not a database\n" * 100)
    assert ablate(["--grid", str(_grid(in_tmp))]) == 1
    line = _one_error_line(capsys)
    assert f"{in_tmp / 'mlflow.db'} is not a usable MLflow store" in line and ".broken" in line
    assert (in_tmp / "mlflow.db").read_bytes().startswith(b"these are notes")  # nothing overwritten


def test_a_locked_store_is_one_line_suggesting_a_server(in_tmp, capsys):
    db = _store(in_tmp)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing
    try:
        assert ablate(["--grid", str(_grid(in_tmp))]) == 1
    finally:
        holder.close()
    line = _one_error_line(capsys)
    assert f"MLflow store {db} is locked by another process" in line and "PostgreSQL" in line


def test_a_read_only_store_is_one_line(in_tmp, capsys):
    made = in_tmp / "made"
    made.mkdir()
    db = _store(made)
    folder = in_tmp / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through file modes: use a read-only mount where allowed
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                          capture_output=True).returncode:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
        shutil.copy(db, folder / "mlflow.db")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        shutil.copy(db, folder / "mlflow.db")
        (folder / "mlflow.db").chmod(0o444)
        folder.chmod(0o555)
    try:
        assert ablate(["--grid", str(_grid(in_tmp)), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]) == 1
        assert f"MLflow store {folder / 'mlflow.db'} is read-only" in _one_error_line(capsys)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)])  # lazy: this process still has the file open
        else:
            folder.chmod(0o755)
