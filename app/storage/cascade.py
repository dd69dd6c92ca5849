"""A user's cancel and retry: their locks, the rows they change, the dependents a retry
brings back. All in the caller's transaction; services/actions.py holds the rules.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, select, update

from app.statuses import Status
from app.storage import database, jsonsets
from app.storage.scheduler_sql import bound_time
from app.storage.tables import deps, status_filter, tasks

USER_ACTIONS_KEY = zlib.crc32(b"task-scheduler:cancel-and-retry")
# The error of a queued task a user cancelled: one that never ran, or one that ran before
# (a retry waiting out its backoff, an attempt put back by a stop).
CANCELLED_UNSTARTED = "Cancelled by a user before it started."
CANCELLED_AWAITING_RETRY = "Cancelled by a user while it waited to run again."


def one_at_a_time(conn: Connection) -> None:
    """On PostgreSQL, queue this cancel or retry behind any other until it commits.

    Two of them lock the rows of one graph in different orders (a retry locks its task,
    then the dependents it brings back, then their dependencies), so together they could
    deadlock again and again under a burst of clicks; in line they cannot. Each is short,
    and SQLite's single writer already puts them in line.
    """
    if conn.dialect.name == "postgresql":
        database.advisory_lock(conn, USER_ACTIONS_KEY)


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
            error=case((tasks.c.attempts > 0, CANCELLED_AWAITING_RETRY), else_=CANCELLED_UNSTARTED),
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


def caught_by(conn: Connection, roots: Sequence[str]) -> set[str]:
    """Return the roots and their dependents, transitively, that did not run because of a
    dependency (CAUGHT), each dependent locked FOR UPDATE (the roots are locked already).

    One recursive read finds them and one statement locks them. On PostgreSQL a
    submission that named one of them and committed between the two is not in the read:
    once all are locked (a later one waits for the lock), such dependents are looked
    for, and the walk goes on from them.
    """
    candidates = set(roots)
    frontier = list(roots)
    while frontier:
        found = [i for i in _caught_below(conn, frontier) if i not in candidates]
        candidates.update(found)
        if conn.dialect.name != "postgresql":
            break  # SQLite's write lock already holds them all
        lock = (
            f"SELECT id FROM tasks WHERE id IN ({jsonsets.ids('postgresql', 'ids')})"
            " ORDER BY id FOR UPDATE"
        )
        conn.exec_driver_sql(lock, {"ids": jsonsets.of_ids(found)}).all()
        frontier = _missed(conn, candidates)
    return candidates


def _caught_sql(d: str) -> str:
    """Every CAUGHT task below the JSON array `ids`, and those tasks themselves.

    On PostgreSQL each step is a LATERAL subquery the planner cannot flatten (OFFSET 0),
    so that the walk goes from each task found to its dependents (see `_reach_sql` in
    propagation.py).
    """
    start = f"SELECT id FROM ({jsonsets.ids(d, 'ids')}) AS s"
    if d == "sqlite":
        return (
            f"WITH RECURSIVE below(id) AS ({start} UNION SELECT e.task_id FROM below b"
            " JOIN task_dependencies e ON e.dependency_id = b.id"
            f" JOIN tasks t ON t.id = e.task_id WHERE {_CAUGHT_SQL}) SELECT id FROM below"
        )
    return (
        f"WITH RECURSIVE below(id) AS (SELECT id::text FROM ({start}) AS s0"
        " UNION SELECT e.task_id::text FROM below b CROSS JOIN LATERAL"
        " (SELECT e.task_id FROM task_dependencies e WHERE e.dependency_id = b.id"
        f" AND (SELECT {_CAUGHT_SQL} FROM tasks t WHERE t.id = e.task_id) OFFSET 0) AS e)"
        " SELECT id FROM below"
    )


# Tasks that did not run because of another task, and come back when it is retried.
_CAUGHT_SQL = (
    "(t.status = 'UPSTREAM_FAILED'"
    " OR (t.status = 'CANCELLED' AND t.error_code = 'upstream_cancelled'))"
)


def _caught_below(conn: Connection, start: Sequence[str]) -> list[str]:
    """Return `start` and every CAUGHT task below it, in one recursive read."""
    sql = _caught_sql(conn.dialect.name)
    return [i for (i,) in conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(start)}).all()]


def _missed(conn: Connection, candidates: set[str]) -> list[str]:
    """Return the CAUGHT dependents of `candidates` that are not among them (PostgreSQL)."""
    below = jsonsets.dependents("postgresql", "ids", _CAUGHT_SQL)
    sql = f"SELECT DISTINCT task_id FROM ({below}) AS b"
    found = conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(sorted(candidates))}).all()
    return [i for (i,) in found if i not in candidates]


def requeue(conn: Connection, pending: dict[str, int], now: datetime) -> list[Any]:
    """Put tasks back in the queue with a fresh budget, each with its count of
    unfinished dependencies; return (id, type, attempts) of those still there."""
    d = conn.dialect.name
    # The submitter's run_at holds again; a backoff does not.
    sql = (
        "UPDATE tasks SET status = 'QUEUED',"
        f" pending_deps = {jsonsets.integer(d, 'j.value')},"
        " failures = 0, not_before = tasks.run_at, error = NULL, error_code = NULL,"
        " result = NULL, progress = NULL, finished_at = NULL,"
        f" cancel_requested = false, updated_at = {jsonsets.param(d, 'now')}"
        f" FROM {jsonsets.pairs(d, 'pending')} WHERE tasks.id = j.key"
        " RETURNING tasks.id, tasks.type, tasks.attempts"
    )
    params = {"pending": jsonsets.of_pairs(pending), "now": bound_time(d, now)}
    return list(conn.exec_driver_sql(sql, params).all())


def count_up(conn: Connection, requeued: set[str]) -> None:
    """Give back an unfinished dependency to each QUEUED dependent outside the requeued set."""
    d = conn.dialect.name
    # Those requeued are left out by the database: down a chain, that is every dependent.
    outside = f"t.status = 'QUEUED' AND t.id NOT IN ({jsonsets.ids(d, 'ids')})"
    sql = f"SELECT task_id FROM ({jsonsets.dependents(d, 'ids', outside)}) AS b"
    rows = conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(requeued)}).all()
    waiting = Counter(t for (t,) in rows)
    if not waiting:
        return
    sql = (
        f"UPDATE tasks SET pending_deps = tasks.pending_deps + {jsonsets.integer(d, 'j.value')}"
        f" FROM {jsonsets.pairs(d, 'counts')} WHERE tasks.id = j.key"
        f" AND {status_filter('tasks', 'QUEUED', d)}"
    )
    conn.exec_driver_sql(sql, {"counts": jsonsets.of_pairs(waiting)})


def unfinished_of_batch(conn: Connection, batch_id: str) -> list[tuple[str, str, int, str]]:
    """Return (id, type, attempts, status) of the batch's QUEUED and RUNNING tasks, in
    creation order, each locked FOR UPDATE (in id order, as every multi-row lock here)."""
    query = (
        select(tasks.c.id, tasks.c.type, tasks.c.attempts, tasks.c.status, tasks.c.seq)
        .where(
            tasks.c.batch_id == batch_id,
            tasks.c.status.in_([Status.QUEUED.value, Status.RUNNING.value]),
        )
        .order_by(tasks.c.id)
        .with_for_update()
    )
    rows = sorted(conn.execute(query).all(), key=lambda r: r.seq)
    return [(r.id, r.type, r.attempts, r.status) for r in rows]


def cancel_queued_many(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """Mark the QUEUED tasks among `ids` CANCELLED by a user; return those it changed."""
    d = conn.dialect.name
    sql = (
        "UPDATE tasks SET status = 'CANCELLED',"
        f" error = CASE WHEN attempts > 0 THEN '{CANCELLED_AWAITING_RETRY}'"
        f" ELSE '{CANCELLED_UNSTARTED}' END,"
        f" error_code = 'cancelled', finished_at = {jsonsets.param(d, 'now')},"
        f" updated_at = {jsonsets.param(d, 'now')}"
        f" WHERE id IN ({jsonsets.ids(d, 'ids')})"
        f" AND {status_filter('tasks', 'QUEUED', d)} RETURNING id"
    )
    params = {"ids": jsonsets.of_ids(ids), "now": bound_time(d, now)}
    return [i for (i,) in conn.exec_driver_sql(sql, params).all()]


def ask_to_stop_many(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """Ask the schedulers running the RUNNING tasks among `ids` to stop them."""
    d = conn.dialect.name
    sql = (
        f"UPDATE tasks SET cancel_requested = true, updated_at = {jsonsets.param(d, 'now')}"
        f" WHERE id IN ({jsonsets.ids(d, 'ids')}) AND tasks.status = 'RUNNING' RETURNING id"
    )
    params = {"ids": jsonsets.of_ids(ids), "now": bound_time(d, now)}
    return [i for (i,) in conn.exec_driver_sql(sql, params).all()]


def times_of(conn: Connection, task_id: str) -> Any:
    """Return the task's run_at and not_before (the row is locked already)."""
    query = select(tasks.c.run_at, tasks.c.not_before).where(tasks.c.id == task_id)
    return conn.execute(query).one()


def edit_queued(conn: Connection, task_id: str, values: dict[str, Any], now: datetime) -> bool:
    """Change columns of a QUEUED task; tell whether it was still QUEUED."""
    changed = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
        .values(**values, updated_at=now)
    )
    return bool(changed.rowcount)


def dependents_below(conn: Connection, task_id: str, most: int) -> list[str] | None:
    """Return the task and every task that depends on it, transitively (None past `most`)."""
    found = [task_id]
    seen = {task_id}
    frontier = [task_id]
    while frontier:
        query = select(deps.c.task_id).where(deps.c.dependency_id.in_(frontier)).distinct()
        frontier = [i for (i,) in conn.execute(query) if i not in seen]
        seen.update(frontier)
        found.extend(frontier)
        if len(found) > most:
            return None
    return found


def lock_all(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Lock the tasks `ids` FOR UPDATE, in id order; return the status of each found."""
    d = conn.dialect.name
    locking = " FOR UPDATE" if d == "postgresql" else ""
    sql = (
        f"SELECT id, status FROM tasks WHERE id IN ({jsonsets.ids(d, 'ids')}) ORDER BY id{locking}"
    )
    return dict(conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(ids)}).all())


def remove(conn: Connection, ids: Sequence[str]) -> None:
    """Delete the tasks `ids` and every edge to or from them."""
    d = conn.dialect.name
    listed = jsonsets.ids(d, "ids")
    params = {"ids": jsonsets.of_ids(ids)}
    conn.exec_driver_sql(
        f"DELETE FROM task_dependencies WHERE task_id IN ({listed}) OR dependency_id IN ({listed})",
        params,
    )
    conn.exec_driver_sql(f"DELETE FROM tasks WHERE id IN ({listed})", params)


def blocking_dependents(conn: Connection, task_id: str, going: set[str]) -> list[str]:
    """Return the tasks depending on `task_id` that keep it: not COMPLETED, not going."""
    dependent = tasks.alias("dependent")
    query = (
        select(deps.c.task_id)
        .join(dependent, dependent.c.id == deps.c.task_id)
        .where(deps.c.dependency_id == task_id, dependent.c.status != Status.COMPLETED.value)
    )
    return [i for (i,) in conn.execute(query) if i not in going]
