"""The database under the API, read and written directly: tasks, claims and instances."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import Connection, func, select, update

from app.runtime import identity
from app.services import submissions
from app.storage import database
from app.storage.database import utcnow
from app.storage.store import Claim, Store
from app.storage.tables import tasks


def add(store: Store, task_id: str, *dependencies: str, **payload: Any) -> None:
    """Submit a 1 ms task of type `t` as the service does, `payload` as its payload."""
    data = {"id": task_id, "type": "t", "duration_ms": 1, "dependencies": list(dependencies)}
    submissions.submit(store.engine, {**data, "payload": payload})


def row(store: Store, task_id: str) -> Any:
    """Return a task's row as stored."""
    with database.read(store.engine) as conn:
        return conn.execute(select(tasks).where(tasks.c.id == task_id)).one()


def set_fields(store: Store, task_id: str, **values: Any) -> None:
    """Change a task's columns behind the service's back."""
    with database.write(store.engine) as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def set_status(app: Flask, task_id: str, status: str) -> None:
    """Move a task to `status` behind the API's back, as a finished run would."""
    set_fields(app.extensions["store"], task_id, status=status)


def count(app: Flask, table: Any = tasks, task_id: str | None = None) -> int:
    """Count the rows of `table` (those of `task_id` when given)."""
    query = select(func.count()).select_from(table)
    if task_id is not None:
        query = query.where(table.c.id == task_id)
    with database.read(app.extensions["store"].engine) as conn:
        return int(conn.execute(query).scalar_one())


def register(store: Store, worker: str) -> None:
    """Register an instance named `worker` unless it is registered already."""
    if worker not in {i.id for i in store.instances()}:
        now = utcnow()
        store.register(
            {"id": worker, "hostname": "test", "pid": 0, "started_at": now, "heartbeat_at": now}
        )


def claim_all(store: Store, worker: str = "w1", limit: int = 100) -> list[Claim]:
    """Claim up to `limit` ready tasks as `worker` (registered first if need be)."""
    register(store, worker)
    return store.claim(worker, limit)


def exited_pid() -> int:
    """Return the pid of a process of this host that has exited (and been waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def register_instance(store: Store, instance_id: str, pid: int, *, age_s: float = 0) -> None:
    """Register an instance of this host with process `pid`, last seen `age_s` ago."""
    seen = utcnow() - timedelta(seconds=age_s)
    store.register(
        {
            "id": instance_id,
            "hostname": identity.host_key(),
            "pid": pid,
            "process_start": identity.start_time(pid) or "0",
            "started_at": seen,
            "heartbeat_at": seen,
            "state": "running",
        }
    )


def postgres_plans(conn: Connection, statements: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Return PostgreSQL's plan of each (statement, parameters), as EXPLAIN prints it."""
    return [
        "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, params))
        for sql, params in statements
    ]
