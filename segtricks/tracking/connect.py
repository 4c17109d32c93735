"""First contact with a tracking store, and every way it fails as one line.

Creating a SQLite store is serialised by a file lock (``<db>.lock``), and the new store is built in a
temporary file and renamed into place (an existing file is therefore always complete): a kill during
MLflow's schema creation leaves no half-created ``mlflow.db``, and workers started at once on a fresh
folder do not race the migration. Store failures (locked, read-only, not a database, half-migrated,
not a file) become one ``StoreError`` line, and so do a URI of a scheme MLflow does not know
(``TrackingUriError``) and an http(s) URI at which nothing answers (probed with a short timeout first:
MLflow would retry it for minutes).
"""
from __future__ import annotations

import errno
import logging
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import Optional

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

from segtricks import errors
from segtricks.files import NoSpaceError, file_lock, write_atomic
from segtricks.tracking.uri import sqlite_path

# MLflow's SQL layer logs each database error with a traceback before raising it, and a note on store
# creation; the raised error becomes one line here (explain_store_error), so those logs are noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

# How long an http(s) store may take to accept a connection at first contact before it is reported
# as not answering.
CONNECT_TIMEOUT_S = 5


class StoreError(errors.Unavailable, RuntimeError):
    """The tracking store cannot be used; the message names the store and what to do (exit status 1)."""


class TrackingUriError(errors.BadInput, StoreError):
    """The tracking URI itself is wrong (a scheme MLflow has no store for): bad input, exit status 2."""


def _touch_store(uri: str) -> MlflowClient:
    """A client whose store has been opened (MLflow creates or verifies the schema on first use)."""
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)
    return client


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def _probe_database(uri: str) -> None:
    """One connection to a database store, which raises at once when its server is not there: MLflow
    retries for 100 s (ten attempts with growing sleeps) before it gives up."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _create_sqlite_store(path: Path) -> None:
    """A new store at ``path``: MLflow's schema is built in a temporary file beside it, which is
    renamed into place once complete (a kill leaves at most the temporary file and its journal)."""
    # creators killed earlier left theirs (``.creating``: the name before segtricks.files named them);
    # the caller holds the lock, so no live creator's file is among them
    for pattern in (f".{path.name}.*.tmp*", f".{path.name}.*.creating*"):
        for left in path.parent.glob(pattern):
            left.unlink(missing_ok=True)
    write_atomic(path, lambda tmp: _touch_store(f"sqlite:///{tmp}"))


def _count_runs(path: Path) -> Optional[int]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return None


def explain_store_error(exc: BaseException, uri: str) -> Optional[str]:
    """One line saying what is wrong with the store and what to do, or None when ``exc`` is not a
    store problem. Recognises SQLite's locked, read-only, not-a-database and half-migrated states."""
    text, cause = "", exc
    while cause is not None:  # MLflow wraps SQLAlchemy, which wraps sqlite3
        text += f" {cause}"
        cause = cause.__cause__ or cause.__context__
    path = sqlite_path(uri)
    where = str(path) if path else uri
    if "database is locked" in text:
        return (f"MLflow store {where} is locked by another process (SQLite lets one process write at a "
                f"time); for concurrent workers run a tracking server (mlflow server) or use PostgreSQL "
                f"(--tracking-uri postgresql://...)")
    if "readonly database" in text or "read-only file system" in text.lower():
        return (f"MLflow store {where} is read-only; make it and its folder writable, or point "
                f"--tracking-uri at a writable store")
    if "file is not a database" in text or "disk image is malformed" in text:
        return (f"{where} is not a usable MLflow store (not a database, or damaged); move it aside "
                f"(mv {where} {where}.broken) and rerun, or point --tracking-uri at another store")
    if path is not None and any(m in text for m in ("already exists", "duplicate column", "out-of-date database schema",
                                                     "alembic_version", "no such table", "no such column")):
        runs = _count_runs(path)
        if not runs:
            return (f"{where} is a half-created MLflow store (its schema creation was interrupted) and holds "
                    f"no runs: move it aside (mv {where} {where}.broken) and rerun")
        return (f"{where} holds {runs} runs but its schema is not the one MLflow {mlflow.__version__} expects "
                f"(an interrupted or older migration): back it up, then run: mlflow db upgrade sqlite:///{path}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device of MLflow store {where}; free space and rerun"
    if path is None and any(m in text for m in UNREACHABLE):
        innermost = exc
        while innermost.__cause__ or innermost.__context__:
            innermost = innermost.__cause__ or innermost.__context__
        said = str(innermost).strip().splitlines()[0] if str(innermost).strip() else type(innermost).__name__
        return (f"MLflow store {without_password(uri)} cannot be reached ({said}); start its database server, or "
                f"check the URI's host, port, database name and credentials")
    return None


# What database drivers say when a server does not answer or refuses the login (psycopg, PyMySQL, pyodbc)
UNREACHABLE = ("connection failed", "Connection refused", "could not connect", "Can't connect",
               "could not translate host name", "Name or service not known", "password authentication failed",
               "Access denied for user", "timeout expired", "Login timeout expired")


def without_password(uri: str) -> str:
    """``uri`` with any password replaced by ``***``: it goes into error messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def exit_on_environment_error(exc: BaseException, uri: str) -> int:
    """For a CLI's last ``except``: print one line and return exit status 1 for a store problem
    (``StoreError``, ``explain_store_error``) or a full disk (``NoSpaceError``), 2 for a malformed
    tracking URI; re-raise anything else."""
    if isinstance(exc, (StoreError, NoSpaceError)):
        message, code = str(exc), exc.exit_code
    else:
        message, code = explain_store_error(exc, uri), errors.Unavailable.exit_code
    if message is None:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return code


def _probe_server(uri: str) -> None:
    """A StoreError at once when nothing answers at an http(s) store. MLflow retries a refused or
    timed-out connection with backoff (minutes, silently). Any HTTP answer, even an error, passes:
    what a server that is not MLflow's says is reported by ``open_client``."""
    import requests  # MLflow's own HTTP client: the same proxies and certificates apply
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=(CONNECT_TIMEOUT_S, 30))
    except requests.exceptions.SSLError:  # a server answered; MLflow's TLS settings decide
        return
    except requests.exceptions.Timeout:
        reason = f"no answer within {CONNECT_TIMEOUT_S} s"
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        reason = ("connection refused" if "refused" in text else "host name not found"
                  if "resolve" in text or "Name or service" in text else "cannot connect")
    else:
        return
    url = urllib.parse.urlparse(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    fix = (f"start one with: mlflow server --host {url.hostname} --port {port} --backend-store-uri "
           f"sqlite:///mlflow.db" if url.hostname in ("127.0.0.1", "localhost", "::1")
           else "check that the server runs and the address is right")
    raise StoreError(f"no MLflow server answers at {uri} ({reason}); {fix}, or drop --tracking-uri "
                     f"(and $MLFLOW_TRACKING_URI) to use ./mlflow.db")


def open_client(uri: str) -> MlflowClient:
    """A client on ``uri`` whose store exists and has MLflow's schema (see the module docstring)."""
    path = sqlite_path(uri)
    try:
        if path is None and urllib.parse.urlparse(uri).scheme in ("http", "https"):
            _probe_server(uri)
            try:
                return _touch_store(uri)
            except mlflow.exceptions.MlflowException as exc:  # not MLflow's API, or our credentials refused
                said = str(exc).split(". Response body")[0].splitlines()[0]
                raise StoreError(f"{uri} does not answer as an MLflow tracking server ({said}); check its address "
                                 f"(host, port, path) and credentials") from None
        if path is None:
            if urllib.parse.urlparse(uri).scheme.split("+")[0] in DATABASE_SCHEMES:
                _probe_database(uri)
            return _touch_store(uri)
        if not path.parent.is_dir():
            raise StoreError(f"MLflow store {path}: folder {path.parent} does not exist")
        if path.exists() and not path.is_file():  # MLflow would retry opening it for minutes
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise StoreError(f"MLflow store {path} is {kind}, not an SQLite file: move it aside (mv {path} "
                             f"{path}.aside) and rerun, or point --tracking-uri at another file")
        if not path.exists():  # an existing file is complete: it was renamed into place whole
            with file_lock(path.with_name(path.name + ".lock")):
                if not path.exists():
                    _create_sqlite_store(path)
        return _touch_store(uri)
    except UnsupportedModelRegistryStoreURIException:  # MLflow raises it for tracking stores too
        raise TrackingUriError(
            f"tracking URI {uri} (--tracking-uri or $MLFLOW_TRACKING_URI): MLflow has no store for scheme "
            f"{urllib.parse.urlparse(uri).scheme!r}; use sqlite:///<file>.db, file:<folder>, http(s)://<host>:<port> "
            f"of an MLflow server, postgresql://, mysql://, mssql:// or databricks") from None
    except (StoreError, NoSpaceError):
        raise
    except Exception as exc:
        message = explain_store_error(exc, uri)
        if message is None:
            raise
        raise StoreError(message) from None
