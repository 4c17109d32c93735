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
