"""Optuna's distributed mode against a real PostgreSQL server: two workers share one study.

`.ci/run` starts Debian's PostgreSQL (`.ci/postgres.sh`) and sets $SEGTRICKS_TEST_POSTGRES_URL;
elsewhere the test skips, saying so.
"""
import os
import subprocess
import sys
import uuid

import optuna
import pytest

from helpers import REPO, write_study

URL = os.environ.get("SEGTRICKS_TEST_POSTGRES_URL")


@pytest.mark.slow
@pytest.mark.skipif(not URL, reason="no PostgreSQL server: set $SEGTRICKS_TEST_POSTGRES_URL (.ci/postgres.sh starts one)")
def test_two_workers_share_one_study_on_postgresql(tmp_path):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg[binary], test extra) is missing")
    name = f"pg_{uuid.uuid4().hex[:8]}"  # a fresh study on a shared server
    path = write_study(tmp_path, name=name, n_trials=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGTRICKS_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "segtricks.tune", "--study", str(path), "--storage", URL]
    # one process creates the study first (as a deployment would), then two workers share it
    first = subprocess.run(cmd + ["--n-trials", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name=name, storage=URL)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) >= 4 and all(t.state.name == "COMPLETE" for t in done)
    assert len({t.number for t in done}) == len(done)
    optuna.delete_study(study_name=name, storage=URL)
