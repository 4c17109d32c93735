"""The tracking store's first contact and its failure states (issue 11 defect 3 and its messages),
and claims of a cell by concurrent workers."""
import http.server
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO
from segtricks.tracking import claims
from segtricks.tracking.connect import StoreError
from segtricks.tracking.store import Store
from segtricks.ablate import main as ablate

OPEN_STORE = "import sys; from segtricks.tracking.store import Store; print(Store(sys.argv[1]).experiment('x'))"


@pytest.mark.slow
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
    store = _reopen(db)  # a working store: an experiment and a run are written and read back
    exp_id = store.experiment("x")
    run = store.start(exp_id, "r", {"cell": "c"})
    assert store.client.get_experiment(exp_id).name == "x" and [r.info.run_id for r in store.runs(exp_id)] == [run.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def _reopen(db: Path) -> Store:
    """A fresh first contact with ``db``, as a new process makes (MLflow caches stores per URI)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    return Store(f"sqlite:///{db}")


def _store(tmp_path) -> Path:
    db = tmp_path / "mlflow.db"
    Store(f"sqlite:///{db}").experiment("x")
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
    with pytest.raises(StoreError, match=rf"{db} is a half-created MLflow store .* holds no runs: "
                                                  rf"move it aside \(mv {db} {db}.broken\)"):
        _reopen(db)


def test_store_with_runs_at_an_older_schema_suggests_mlflow_db_upgrade(tmp_path):
    db = _store(tmp_path)
    store = Store(f"sqlite:///{db}")
    store.start(store.experiment("x"), "r", {})
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # an early MLflow revision
    with pytest.raises(StoreError, match=rf"{db} holds 1 runs .* mlflow db upgrade sqlite:///{db}"):
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


@pytest.mark.slow
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_not_running_is_one_line_within_seconds(in_tmp, capsys):
    """Before: MLflow retried the refused connection with backoff, silently, for minutes."""
    import segtricks.runners.grid_runner  # noqa: F401  (imported first: the time asserted is the store's first contact)
    port = _free_port()  # closed again: nothing listens there
    start = time.time()
    assert ablate(["--grid", str(_grid(in_tmp)), "--tracking-uri", f"http://127.0.0.1:{port}"]) == 1
    assert time.time() - start < 10
    assert _one_error_line(capsys) == (
        f"error: no MLflow server answers at http://127.0.0.1:{port} (connection refused); start one with: "
        f"mlflow server --host 127.0.0.1 --port {port} --backend-store-uri sqlite:///mlflow.db, or drop "
        f"--tracking-uri (and $MLFLOW_TRACKING_URI) to use ./mlflow.db")


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """Answers every request 501, silently."""

    def log_message(self, *args) -> None:
        pass


def test_an_http_server_that_is_not_mlflow_is_one_line(in_tmp, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert ablate(["--grid", str(_grid(in_tmp)), "--tracking-uri", uri]) == 1
    finally:
        server.shutdown()
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {uri} does not answer as an MLflow tracking server (") and "501" in line


def test_an_unknown_tracking_uri_scheme_is_one_line(in_tmp, capsys):
    """Before: a 52-line traceback ending in UnsupportedModelRegistryStoreURIException."""
    assert ablate(["--grid", str(_grid(in_tmp)), "--tracking-uri", "garbage://x"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: tracking URI garbage://x (--tracking-uri or $MLFLOW_TRACKING_URI): MLflow has "
                           "no store for scheme 'garbage'; use sqlite:///<file>.db, file:<folder>, http(s)://")
    assert not (in_tmp / "mlflow.db").exists()


def test_a_store_path_that_is_a_directory_is_one_line(in_tmp, capsys):
    """Before: MLflow retried opening it for about 100 s, then 156 lines of SQLAlchemy errors."""
    db = in_tmp / "mlflow.db"
    db.mkdir()
    start = time.time()
    assert ablate(["--grid", str(_grid(in_tmp))]) == 1
    assert time.time() - start < 10
    assert _one_error_line(capsys) == (f"error: MLflow store {db} is a directory, not an SQLite file: move it aside "
                                       f"(mv {db} {db}.aside) and rerun, or point --tracking-uri at another file")
    assert list(db.iterdir()) == []


CELL = {"cell": "c", "config_hash": "h" * 64}


def _all_runs(store: Store, exp_id: str) -> dict:
    from mlflow.entities import ViewType
    return {r.info.run_id: r for r in store.client.search_runs([exp_id], run_view_type=ViewType.ALL)}


def test_a_losing_claim_is_killed_and_deleted(tmp_path):
    """Before: the loser's run was deleted but left RUNNING."""
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = store.experiment("x")
    won = store.claim(exp_id, "c", CELL)
    assert won is not None and store.claim(exp_id, "c", CELL) is None
    (lost,) = [r for r in _all_runs(store, exp_id).values() if r.info.run_id != won.id]
    assert (lost.info.status, lost.info.lifecycle_stage) == ("KILLED", "deleted")
    assert [r.info.run_id for r in store.runs(exp_id)] == [won.id] and won.status() == "RUNNING"


def test_a_claim_whose_insert_waited_loses_to_the_claim_that_looked_first(tmp_path, monkeypatch):
    """Before: the older MLflow start time won, and it is taken before the insert: a claim stalled
    between the two (SQLite's write lock, a loaded machine) won over a rival that had already looked,
    seen no one and started; both trained."""
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = store.experiment("x")
    first = store.claim(exp_id, "c", CELL)
    started = store.client.get_run(first.id).info.start_time
    create_run = store.client.create_run
    monkeypatch.setattr(store.client, "create_run", lambda *a, **k: create_run(*a, start_time=started - 1000, **k))
    assert store.claim(exp_id, "c", CELL) is None
    assert [r.info.run_id for r in store.runs(exp_id)] == [first.id]


def test_a_claim_counts_a_rival_not_yet_timed_as_earlier_once_it_has_waited(tmp_path, monkeypatch):
    """A rival run created but whose claim time is not written yet is waited for, then lost to."""
    monkeypatch.setattr(claims, "STALE_AFTER_S", 1.0)
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = store.experiment("x")
    rival = store.start(exp_id, "c", {**CELL, "heartbeat": str(time.time() + 60), **claims.worker_tags()})
    start = time.time()
    assert store.claim(exp_id, "c", CELL) is None
    assert time.time() - start >= 1.0
    assert [r.info.run_id for r in store.runs(exp_id)] == [rival.id]


@pytest.mark.slow
def test_a_lost_claim_plans_again_instead_of_training_a_cell_that_shares_the_rivals_training(in_tmp, monkeypatch):
    """Issue: two workers that planned at once both saw the grid empty; the loser of the baseline's
    claim went on with its plan to the GF cell, whose training it then ran a second time (two
    role=train runs). The rival here claims the baseline just before this worker and dies."""
    from segtricks.runners import grid_runner
    from segtricks.runners.plan import load_grid
    monkeypatch.setattr(claims, "STALE_AFTER_S", 3.0)  # the dead rival's run is resumed soon
    path = in_tmp / "g.yaml"
    path.write_text(f"name: g\nbase: {REPO / 'experiments' / 'demo_cell.yaml'}\nset: {{optim.epochs: 1}}\n"
                    f"axes:\n  tricks:\n    - {{name: base, set: {{tricks: []}}}}\n"
                    f"    - {{name: gf, set: {{tricks: [gf]}}}}\n")
    grid = load_grid(str(path), ["optim.steps_per_epoch=2", "optim.batch_size=4", "data.train.limit=8",
                                 "data.val.limit=4", "eval=[{name: synthetic, split: test, limit: 4}]"])
    claim, rival = Store.claim, []

    def rival_first(self, exp_id, name, tags, since_ms=None):
        if not rival:
            rival.append(claim(self, exp_id, name, tags, since_ms))
        return claim(self, exp_id, name, tags, since_ms)

    monkeypatch.setattr(Store, "claim", rival_first)
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    rows = grid_runner.run_grid(grid, uri)
    assert sorted((r["cell"], r["status"]) for r in rows) == [("base", "FINISHED"), ("gf", "FINISHED")]
    store = Store(uri)
    by_cell = {r.data.tags["cell"]: r for r in store.runs(store.experiment("g"))}
    assert by_cell["base"].info.run_id == rival[0].id  # the dead rival's run, resumed
    assert by_cell["base"].data.tags["role"] == "train" and "role" not in by_cell["gf"].data.tags
    assert by_cell["gf"].data.tags["model_from_run"] == rival[0].id


def _stale_run(store, exp_id, **extra):
    """A run whose worker (on another host) stopped beating long ago."""
    return store.start(exp_id, "c", {**CELL, "heartbeat": "100.0", "worker": "elsewhere:1", **extra})


def test_two_workers_that_find_the_same_dead_run_do_not_both_resume_it(tmp_path):
    """Issue 28: RESUME took no claim, so two workers that found one stale run both resumed it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(uri)
    run = _stale_run(store, store.experiment("x"))
    start = time.time() + 3  # every process imports first, then all take over at once
    script = ("import sys, time; from segtricks.tracking.store import Store; s = Store(sys.argv[1]); "
              "time.sleep(max(0, float(sys.argv[3]) - time.time())); "
              "print('won' if s.take_over(sys.argv[2]) else 'lost')")
    procs = [subprocess.Popen([sys.executable, "-c", script, uri, run.id, repr(start)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO) for _ in range(3)]
    said = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert said == ["lost", "lost", "won"]


def test_a_takeover_counts_rivals_of_this_episode_only(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = store.experiment("x")
    # an earlier takeover (older than the last heartbeat: its worker resumed the run, then died too), and
    # a writer that died between its two writes long ago: neither is a rival now
    old = _stale_run(store, exp_id, **{"takeover.gone_1": "50.0", "takeover.gone_2": "pending:60.0"})
    assert store.take_over(old.id) is not None
    rival = _stale_run(store, exp_id, **{"takeover.rival_7": "150.0"})  # took it over first, this episode
    assert store.take_over(rival.id) is None
    monkeypatch.setattr(claims, "STALE_AFTER_S", 1.0)
    pending = _stale_run(store, exp_id, **{"takeover.rival_8": f"pending:{time.time()!r}"})
    began = time.time()
    assert store.take_over(pending.id) is not None  # waited for its rival's second write, which never came
    assert time.time() - began >= 1.0
    done = _stale_run(store, exp_id)
    store.run(done.id).finish()
    assert store.take_over(done.id) is None  # no longer RUNNING
