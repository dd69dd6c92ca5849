"""The dashboard's graph: a task's neighbours along dependency edges, both ways, and the
nodes and edges among the tasks it shows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from app.storage.tables import deps, tasks


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
    """Return the `[dependency, dependent]` pairs between tasks of `ids`."""
    members = list(ids)
    query = (
        select(deps.c.dependency_id, deps.c.task_id)
        .where(deps.c.task_id.in_(members), deps.c.dependency_id.in_(members))
        .order_by(deps.c.dependency_id, deps.c.task_id)
    )
    return [[row.dependency_id, row.task_id] for row in conn.execute(query)]
