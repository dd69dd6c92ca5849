"""Propagation along dependency edges when tasks end, all in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, func, select, update

from app import events
from app.statuses import FAILED_LIKE, Status
from app.storage.scheduler_sql import count_down
from app.storage.tables import chunks, deps, still_queued, tasks


def settle(conn: Connection, ended: dict[str, Status], now: datetime) -> int:
    """Propagate tasks that just became terminal to their dependents, transitively.

    Each dependent loses one unfinished dependency per ended task it waits for. An
    `all_success` dependent still QUEUED behind a failure becomes UPSTREAM_FAILED, behind
    a cancel CANCELLED (a failure wins), and the cascade goes on from it. Returns how
    many dependents were left waiting for nothing (ready, unless cut off next).
    """
    ready = 0
    frontier = dict(ended)
    while frontier:
        ids = list(frontier)
        for part in chunks(ids):
            ready += count_down(conn, part)
        failed = [i for i, s in frontier.items() if s.value in FAILED_LIKE]
        cancelled = [i for i, s in frontier.items() if s is Status.CANCELLED]
        frontier = {}
        for part in chunks(failed):
            for tid in cut_off(conn, part, Status.UPSTREAM_FAILED, "failed", now):
                frontier[tid] = Status.UPSTREAM_FAILED
        for part in chunks(cancelled):
            for tid in cut_off(conn, part, Status.CANCELLED, "was cancelled", now):
                frontier[tid] = Status.CANCELLED
    return ready


def cut_off(
    conn: Connection, ended: Sequence[str], status: Status, verb: str, now: datetime
) -> list[str]:
    """Mark the QUEUED `all_success` dependents of `ended` as never to run; return them."""
    culprit = (
        select(func.min(deps.c.dependency_id))
        .where(deps.c.task_id == tasks.c.id, deps.c.dependency_id.in_(ended))
        .scalar_subquery()
    )
    code = "upstream_failed" if status is Status.UPSTREAM_FAILED else "upstream_cancelled"
    waiting = select(deps.c.task_id).where(deps.c.dependency_id.in_(ended))
    stmt = (
        update(tasks)
        .where(
            tasks.c.id.in_(waiting),
            still_queued(conn.dialect.name),
            tasks.c.trigger_rule == "all_success",
        )
        .values(
            status=status.value,
            error="Dependency " + culprit + f" {verb}, so this task will not run.",
            error_code=code,
            finished_at=now,
            updated_at=now,
        )
        .returning(tasks.c.id, tasks.c.type, tasks.c.attempts, tasks.c.error)
    )
    rows = conn.execute(stmt).all()
    events.stage([(r.id, r.type, r.attempts, status.value, r.error) for r in rows])
    return [r.id for r in rows]
