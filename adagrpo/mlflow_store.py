"""A SQLite MLflow store shared by concurrent fits: created (schema and migrations) once, under a file lock.

MLflow creates or migrates a SQLite store's schema the first time a client touches it; two processes doing so at
the same moment on a fresh file collide (``duplicate column name``, alembic errors) and can leave it half-migrated.
:func:`ensure_store` takes ``<db>.lock`` (``fcntl.flock``), lets one process create the schema and the experiment,
and the others then find both in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` tracking URI (``None`` for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):]
    return None if rest in ("", ":memory:") else Path(rest)


@contextlib.contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` (blocking)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(uri: str, experiment: str | None = None, artifact_location: str | None = None) -> None:
    """Create the SQLite store at ``uri`` and the ``experiment`` in it, once, under a file lock. Other stores are
    left to MLflow. Idempotent: on an existing, up-to-date store with the experiment it changes nothing."""
    db = sqlite_path(uri)
    if db is None:
        return
    from mlflow.tracking import MlflowClient

    with store_lock(db):
        client = MlflowClient(tracking_uri=uri)  # the schema is created or migrated on first use, here
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=artifact_location)


def mark_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Set tags on an MLflow run and end it with ``status`` (``FAILED``, ``KILLED``); quiet if the run is gone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value[:5000])
        if client.get_run(run_id).info.status == "RUNNING" or status == "FAILED":
            client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 — a best-effort note on a run that may not exist
        if os.environ.get("ADAGRPO_DEBUG"):
            raise
