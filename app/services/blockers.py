"""Why a task is not running: `GET /api/tasks/<id>/blockers`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.services.reads import check_task_id, unknown_task
from app.statuses import TERMINAL, Status
from app.storage import database, membership
from app.storage import queues as queue_rows
from app.storage.reads import why_not_running
from app.storage.roots import Causes, dependencies_where, failed_roots, unfinished_roots

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

STOPPED_BY_UPSTREAM = ("upstream_failed", "upstream_cancelled")


def blockers(engine: Engine, task_id: str) -> dict[str, Any]:
    """Say why a task is not running: its blockers and, below them, the root causes."""
    check_task_id(task_id)
    with database.read(engine) as conn:
        return _explain(conn, task_id)


def _explain(conn: Connection, task_id: str) -> dict[str, Any]:
    row = why_not_running(conn, task_id)
    if row is None:
        raise unknown_task(task_id)
    answer: dict[str, Any] = {"id": row.id, "status": row.status, "blockers": []}
    if row.status == Status.QUEUED.value:
        answer["blockers"] = _queued_blockers(conn, row)
        waiting = [b["task_id"] for b in answer["blockers"] if b["kind"] == "dependency"]
        causes = unfinished_roots(conn, waiting)
    elif row.error_code in STOPPED_BY_UPSTREAM:
        stopped = dependencies_where(conn, [task_id], lambda status: status != Status.COMPLETED)
        answer["blockers"] = [_dependency(d, s) for d, s in stopped.get(task_id, [])]
        causes = failed_roots(conn, [d for d, _ in stopped.get(task_id, [])])
    else:
        causes = Causes([], False)
    answer["root_causes"] = causes.roots
    answer["root_causes_truncated"] = causes.truncated
    return answer


def _queued_blockers(conn: Connection, row: Any) -> list[dict[str, Any]]:
    unfinished = dependencies_where(conn, [row.id], lambda status: status not in TERMINAL)
    if unfinished.get(row.id):
        return [_dependency(d, s) for d, s in unfinished[row.id]]
    now = database.now(conn)
    if row.not_before is not None and row.not_before > now:
        kind = "run_at" if row.run_at is not None and row.run_at >= row.not_before else "backoff"
        return [{"kind": kind, "until": _iso(row.not_before)}]
    found = queue_rows.rows(conn, [row.queue])
    queue = found[0] if found else None
    if queue is not None and queue.paused:
        return [{"kind": "queue_paused", "queue": row.queue}]
    serving = membership.serving_types(conn)
    if not serving:
        return [{"kind": "shutdown"}]
    typed = [queues for types, queues in serving if types is None or row.type in json.loads(types)]
    if not typed:
        return [{"kind": "no_handler", "type": row.type}]
    if not any(queues is None or row.queue in json.loads(queues) for queues in typed):
        return [{"kind": "queue_not_served", "queue": row.queue}]
    if queue is not None and queue.concurrency_limit is not None:
        running = queue_rows.running(conn, [row.queue]).get(row.queue, 0)
        if running >= queue.concurrency_limit:
            return [{"kind": "queue_limit", "queue": row.queue, "limit": queue.concurrency_limit}]
    if queue is not None and queue.rate_limit_per_s is not None:
        held = queue.held(now)
        if held < 1:
            wait = timedelta(seconds=(1 - held) / queue.rate_limit_per_s)
            return [{"kind": "queue_rate", "queue": row.queue, "until": _iso(now + wait)}]
    return [{"kind": "no_slot"}]


def _dependency(task_id: str, status: str) -> dict[str, Any]:
    return {"kind": "dependency", "task_id": task_id, "status": status}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
