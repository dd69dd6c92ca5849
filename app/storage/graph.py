"""The dashboard's graphs: a task's neighbours along dependency edges, both ways; a
batch's tasks with their attempts; and the edges among the tasks a graph shows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from app.storage.tables import deps, task_attempts, tasks


def has_task(conn: Connection, task_id: str) -> bool:
    """Tell whether a task has the id `task_id`."""
    return conn.execute(select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


def neighbours(
    conn: Connection, frontier: list[str], *, towards_dependencies: bool, limit: int
) -> list[str]:
    """Return up to `limit` distinct tasks one edge from `frontier`, in id order.

    Towards dependencies: what the frontier's tasks wait for; otherwise their dependents.
    """
    if towards_dependencies:
        near, far = deps.c.task_id, deps.c.dependency_id
    else:
        near, far = deps.c.dependency_id, deps.c.task_id
    query = select(far).where(near.in_(frontier)).distinct().order_by(far).limit(limit)
    return [other for (other,) in conn.execute(query)]


def nodes(conn: Connection, ids: list[str]) -> list[dict[str, Any]]:
    """Return the id, status and type of each task of `ids` that exists, in that order."""
    rows = conn.execute(select(tasks.c.id, tasks.c.status, tasks.c.type).where(tasks.c.id.in_(ids)))
    by_id = {row.id: {"id": row.id, "status": row.status, "type": row.type} for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def edges(conn: Connection, ids: Iterable[str]) -> list[list[str]]:
    """Return the `[dependency, dependent]` pairs between tasks of `ids`.

    The edges of the dependents are read by key and those from outside dropped here: a
    second IN list on the dependency would have SQLite probe every pair of the two.
    """
    members = set(ids)
    query = (
        select(deps.c.dependency_id, deps.c.task_id)
        .where(deps.c.task_id.in_(members))
        .order_by(deps.c.dependency_id, deps.c.task_id)
    )
    return [
        [row.dependency_id, row.task_id]
        for row in conn.execute(query)
        if row.dependency_id in members
    ]


def batch_tasks(conn: Connection, batch_id: str, limit: int) -> list[dict[str, Any]]:
    """Return up to `limit` tasks of the batch in submission order (through the batch
    index): id, type, status, attempts, and the start and finish of the last attempt."""
    query = (
        select(
            tasks.c.id,
            tasks.c.type,
            tasks.c.status,
            tasks.c.attempts,
            tasks.c.started_at,
            tasks.c.finished_at,
        )
        .where(tasks.c.batch_id == batch_id)
        .order_by(tasks.c.seq)
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def ended_attempts(conn: Connection, ids: list[str], limit: int) -> list[dict[str, Any]]:
    """Return the latest `limit` attempts that ended of the tasks `ids`, oldest first:
    task, number, instance, outcome, start and finish."""
    query = (
        select(
            task_attempts.c.task_id,
            task_attempts.c.attempt,
            task_attempts.c.instance,
            task_attempts.c.outcome,
            task_attempts.c.started_at,
            task_attempts.c.finished_at,
        )
        .where(task_attempts.c.task_id.in_(ids))
        .order_by(task_attempts.c.finished_at.desc())
        .limit(limit)
    )
    rows = [dict(row._mapping) for row in conn.execute(query)]
    rows.reverse()
    return rows
