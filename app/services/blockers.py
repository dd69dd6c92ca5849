"""Why a task is not running: `GET /api/tasks/<id>/blockers`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, or_, select

from app.services.reads import check_task_id, unknown_task
from app.statuses import BLOCKING, TERMINAL, Status
from app.storage import database, readiness
from app.storage.tables import instances, tasks

# How many tasks a walk to the root causes visits at most.
MAX_WALK = 10_000
STOPPED_BY_UPSTREAM = ("upstream_failed", "upstream_cancelled")


def blockers(engine: Engine, task_id: str) -> dict[str, Any]:
    """Say why a task is not running: its blockers and, below them, the root causes."""
    check_task_id(task_id)
    with database.read(engine) as conn:
        return _explain(conn, task_id)


def _explain(conn: Connection, task_id: str) -> dict[str, Any]:
    columns = (
        tasks.c.id,
        tasks.c.type,
        tasks.c.status,
        tasks.c.run_at,
        tasks.c.not_before,
        tasks.c.error_code,
    )
    row = conn.execute(select(*columns).where(tasks.c.id == task_id)).first()
    if row is None:
        raise unknown_task(task_id)
    answer: dict[str, Any] = {"id": row.id, "status": row.status, "blockers": []}
    if row.status == Status.QUEUED.value:
        answer["blockers"] = _queued_blockers(conn, row)
        waiting = [b["task_id"] for b in answer["blockers"] if b["kind"] == "dependency"]
        answer["root_causes"] = _unfinished_roots(conn, waiting)
    elif row.error_code in STOPPED_BY_UPSTREAM:
        stopped = _dependencies(conn, [task_id], lambda status: status != Status.COMPLETED)
        answer["blockers"] = [_dependency(d, s) for d, s in stopped.get(task_id, [])]
        answer["root_causes"] = _failed_roots(conn, [d for d, _ in stopped.get(task_id, [])])
    else:
        answer["root_causes"] = []
    return answer


def _queued_blockers(conn: Connection, row: Any) -> list[dict[str, Any]]:
    unfinished = _dependencies(conn, [row.id], lambda status: status not in TERMINAL)
    if unfinished.get(row.id):
        return [_dependency(d, s) for d, s in unfinished[row.id]]
    now = database.now(conn)
    if row.not_before is not None and row.not_before > now:
        kind = "run_at" if row.run_at is not None and row.run_at >= row.not_before else "backoff"
        return [{"kind": kind, "until": _iso(row.not_before)}]
    serving = [
        types
        for state, types in conn.execute(select(instances.c.state, instances.c.task_types))
        if state == "running"
    ]
    if not serving:
        return [{"kind": "shutdown"}]
    if not any(types is None or row.type in json.loads(types) for types in serving):
        return [{"kind": "no_handler", "type": row.type}]
    return [{"kind": "no_slot"}]


def _dependency(task_id: str, status: str) -> dict[str, Any]:
    return {"kind": "dependency", "task_id": task_id, "status": status}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _dependencies(
    conn: Connection, ids: Iterable[str], keep: Any
) -> dict[str, list[tuple[str, str]]]:
    """Return, for each task, the dependencies (id, status) whose status `keep` accepts."""
    found = readiness.dependencies(conn, ids, hold=False)
    return {t: [(d, s) for d, s in pairs if keep(s)] for t, pairs in found.items()}


def _unfinished_roots(conn: Connection, start: list[str]) -> list[str]:
    """Follow unfinished dependencies down to the tasks that wait for none."""
    return _walk(conn, start, lambda status: status not in TERMINAL)


def _failed_roots(conn: Connection, start: list[str]) -> list[str]:
    """Follow the dependencies that stopped a task down to the tasks whose retry works.

    The walk goes on only through tasks that did not run because of a dependency; one
    that failed or was cancelled on its own is a root, whatever its dependencies did (an
    all_done task that ran after a failure and failed too), and so is a stopped task whose
    dependencies no longer stop it. The same tasks a retry names as the one to retry.
    """
    return _walk(conn, start, lambda status: status in BLOCKING, _stopped_by_upstream)


def _stopped_by_upstream(conn: Connection, ids: list[str]) -> list[str]:
    """Return those of `ids` that did not run because of a dependency."""
    query = select(tasks.c.id).where(
        tasks.c.id.in_(ids),
        or_(
            tasks.c.status == Status.UPSTREAM_FAILED.value,
            tasks.c.error_code == "upstream_cancelled",
        ),
    )
    return [task_id for (task_id,) in conn.execute(query)]


def _walk(
    conn: Connection,
    start: list[str],
    follow: Any,
    through: Callable[[Connection, list[str]], list[str]] | None = None,
) -> list[str]:
    """Walk dependencies whose status `follow` accepts, from the tasks `through` lets on
    (all by default); return the tasks where the walk stops."""
    seen = set(start)
    frontier = list(start)
    roots: list[str] = []
    while frontier and len(seen) < MAX_WALK:
        onward = frontier if through is None else through(conn, frontier)
        below = _dependencies(conn, onward, follow)
        following: list[str] = []
        for task_id in frontier:
            children = [d for d, _ in below.get(task_id, [])]
            if not children:
                roots.append(task_id)
            following.extend(d for d in children if d not in seen)
        seen.update(following)
        frontier = list(dict.fromkeys(following))
    return sorted(dict.fromkeys(roots))
