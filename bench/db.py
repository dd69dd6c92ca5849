"""Fresh databases for each scenario, and reading the tasks' own timestamps back from them."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.server import Database

UNFINISHED = "status IN ('QUEUED', 'RUNNING')"


def sqlite_database(workdir: Path, name: str) -> Database:
    """Return a new, empty SQLite file in `workdir`."""
    path = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Database("sqlite", f"sqlite:///{path}", path)


def postgres_database(admin_url: str, name: str) -> Database:
    """Create (or re-create) database `name` on the server of `admin_url`, after a
    checkpoint: the server's flushing of what an earlier figure wrote is not this one's."""
    with _pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute("CHECKPOINT")
    parts = urlsplit(_plain(admin_url))
    return Database("postgresql", urlunsplit(parts._replace(path="/" + name)))


def drop_postgres(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists."""
    with _pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available(admin_url: str) -> bool:
    """Tell whether the PostgreSQL server answers."""
    try:
        with _pg_admin(admin_url) as conn:
            conn.execute("SELECT 1")
    except Exception:  # any failure means: no PostgreSQL figures this run
        return False
    return True


def _pg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(_plain(url), autocommit=True, connect_timeout=5)


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def query(db: Database, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one read query on `db` outside the service, with `?` placeholders."""
    if db.kind == "sqlite":
        assert db.path is not None
        conn = sqlite3.connect(db.path, timeout=60)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(_plain(db.url)) as pg:
        return pg.execute(sql.replace("?", "%s"), params).fetchall()


def wait_finished(db: Database, timeout_s: float, poll_s: float = 0.05) -> None:
    """Wait until no task is QUEUED or RUNNING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if query(db, f"SELECT count(*) FROM tasks WHERE {UNFINISHED}")[0][0] == 0:
            return
        time.sleep(poll_s)
    raise TimeoutError(f"tasks still unfinished after {timeout_s:.0f} s")


def span(db: Database, prefix: str) -> dict[str, Any]:
    """Summarise the tasks whose id starts with `prefix`: counts, first start, last finish."""
    rows = query(
        db,
        "SELECT count(*), sum(CASE WHEN status = 'COMPLETED' THEN 1 ELSE 0 END), "
        "min(started_at), max(finished_at) FROM tasks WHERE id LIKE ?",
        (prefix + "%",),
    )
    total, completed, first, last = rows[0]
    return {
        "tasks": total,
        "completed": int(completed or 0),
        "first_start": stamp(first),
        "last_finish": stamp(last),
    }


def times(db: Database, task_id: str) -> tuple[datetime, datetime]:
    """Return (started_at, finished_at) of one task."""
    rows = query(db, "SELECT started_at, finished_at FROM tasks WHERE id = ?", (task_id,))
    if not rows or rows[0][1] is None:
        raise RuntimeError(f"task {task_id} did not finish")
    return stamp(rows[0][0]), stamp(rows[0][1])


def result(db: Database, task_id: str) -> Any:
    """Return the stored `result` of one task, decoded."""
    rows = query(db, "SELECT result FROM tasks WHERE id = ?", (task_id,))
    value = rows[0][0] if rows else None
    return json.loads(value) if isinstance(value, str | bytes) else value


def stamp(value: Any) -> datetime:
    """Turn a stored timestamp (naive UTC; text on SQLite) into a datetime."""
    if isinstance(value, datetime):
        return value
    if value is None:
        raise RuntimeError("a task has no timestamp")
    return datetime.fromisoformat(str(value))
