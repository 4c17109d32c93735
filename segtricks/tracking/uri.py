"""Which tracking store a command uses: its URI, and the SQLite file behind it.

Default: ``sqlite:///mlflow.db`` in the working directory; ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``
selects another. MLflow-free (importing MLflow takes seconds), so that a command can name the store,
or see that it does not exist, before deciding to open it (``python -m segtricks.cache ls``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def tracking_uri(explicit: Optional[str] = None) -> str:
    """The store to use; the default SQLite file is made absolute (MLflow caches stores by URI, and
    workers must all reach the same file)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else uri


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for servers and databases in memory)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0])


def runs_page(uri: str, exp_id: str) -> str:
    """How a user opens an experiment's runs table: for SQLite, the ``mlflow ui`` command and its link;
    for a server, its link. ``workflowType=machine_learning`` opens the runs table: MLflow 3 otherwise
    lands on its GenAI overview, an empty traces dashboard."""
    page = f"#/experiments/{exp_id}?workflowType=machine_learning"
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/{page}"
    return f"the runs: {uri.rstrip('/')}/{page}"
