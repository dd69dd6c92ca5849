"""A user's cancel and retry: their locks, the rows they change, the dependents a retry
brings back. All in the caller's transaction; services/actions.py holds the rules.
"""

from __future__ import annotations

import zlib
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select, text, update

from app.statuses import Status
from app.storage.tables import chunks, deps, tasks

# Tasks that did not run because of another task, and come back when it is retried.
CAUGHT = or_(
    tasks.c.status == Status.UPSTREAM_FAILED.value,
    and_(tasks.c.status == Status.CANCELLED.value, tasks.c.error_code == "upstream_cancelled"),
)
USER_ACTIONS_KEY = zlib.crc32(b"task-scheduler:cancel-and-retry")


def one_at_a_time(conn: Connection) -> None:
    """On PostgreSQL, queue this cancel or retry behind any other until it commits.

    Two of them lock the rows of one graph in different orders (a retry locks its task,
    then the dependents it brings back, then their dependencies), so together they could
    deadlock again and again under a burst of clicks; in line they cannot. Each is short,
    and SQLite's single writer already puts them in line.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": USER_ACTIONS_KEY})


def locked(conn: Connection, task_id: str) -> Any:
    """Return the task's row locked FOR UPDATE, or None when the id is unknown."""
    query = select(
        tasks.c.id,
        tasks.c.type,
        tasks.c.attempts,
        tasks.c.status,
        tasks.c.error_code,
        tasks.c.trigger_rule,
    ).where(tasks.c.id == task_id)
    return conn.execute(query.with_for_update()).first()


def cancel_queued(conn: Connection, task_id: str, now: datetime) -> None:
    """Mark a QUEUED task CANCELLED by a user."""
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
        .values(
            status=Status.CANCELLED.value,
            error="Cancelled by a user before it started.",
            error_code="cancelled",
            finished_at=now,
            updated_at=now,
        )
    )


def ask_to_stop(conn: Connection, task_id: str, now: datetime) -> None:
    """Ask the scheduler running a RUNNING task to stop it."""
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.status == Status.RUNNING.value)
        .values(cancel_requested=True, updated_at=now)
    )


def caught_by(conn: Connection, root: str) -> set[str]:
    """Return the root and its dependents, transitively, that did not run because of a
    dependency (CAUGHT), each locked FOR UPDATE."""
    candidates = {root}
    frontier = [root]
    while frontier:
        found: list[str] = []
        for part in chunks(frontier):
            # Lock before reading dependents: a submission naming one of these holds it
            # FOR SHARE until it commits, and its new dependent must be seen here.
            lock = select(tasks.c.id).where(tasks.c.id.in_(part)).with_for_update()
            conn.execute(lock).all()
            query = (
                select(tasks.c.id)
                .join(deps, deps.c.task_id == tasks.c.id)
                .where(deps.c.dependency_id.in_(part), CAUGHT)
            )
            found.extend(i for (i,) in conn.execute(query) if i not in candidates)
        frontier = list(dict.fromkeys(found))
        candidates.update(frontier)
    return candidates


def requeue(conn: Connection, task_id: str, pending: int, now: datetime) -> Any:
    """Put a task back in the queue with a fresh budget; return its type and attempts,
    or None when it is gone."""
    return conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(
            status=Status.QUEUED.value,
            pending_deps=pending,
            failures=0,
            # The submitter's run_at holds again; a backoff does not.
            not_before=tasks.c.run_at,
            error=None,
            error_code=None,
            result=None,
            progress=None,
            finished_at=None,
            cancel_requested=False,
            updated_at=now,
        )
        .returning(tasks.c.type, tasks.c.attempts)
    ).first()


def count_up(conn: Connection, requeued: set[str]) -> None:
    """Give back an unfinished dependency to each QUEUED dependent outside the requeued set."""
    waiting: Counter[str] = Counter()
    for part in chunks(list(requeued)):
        query = select(deps.c.task_id).where(deps.c.dependency_id.in_(part))
        waiting.update(t for (t,) in conn.execute(query) if t not in requeued)
    for task_id, count in waiting.items():
        conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
            .values(pending_deps=tasks.c.pending_deps + count)
        )
