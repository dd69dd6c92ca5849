"""Retention: delete finished tasks older than a cut-off, a chunk per transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, exists, or_, select, text

from . import database
from .models import TERMINAL, Status
from .tables import chunks, deps, tasks

# Tasks deleted per transaction: short enough that writers queued behind it barely wait.
PRUNE_CHUNK = 1000
UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


def prune(
    engine: Engine,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    chunk: int = PRUNE_CHUNK,
) -> int:
    """Delete tasks that finished before `now - older_than`; return how many went.

    A finished task that an unfinished (QUEUED or RUNNING) task still depends on is kept,
    so that no task still in play loses a dependency from what it shows.
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    cutoff = _naive_utc(now or database.utcnow()) - older_than
    deleted = 0
    # Each chunk resumes where the last one stopped, so the tasks kept for their
    # dependents (and, on PostgreSQL, the dead rows of earlier chunks) are walked once.
    after: datetime | None = None
    while True:
        with database.write(engine) as conn:
            selected, removed, after = _prune_chunk(conn, cutoff, chunk, after)
        deleted += removed
        # Fewer than a chunk means none are left; none removed means the rest are kept.
        if selected < chunk or removed == 0:
            return deleted


def _prune_chunk(
    conn: Connection, cutoff: datetime, chunk: int, after: datetime | None
) -> tuple[int, int, datetime | None]:
    """Delete up to `chunk` prunable tasks finished from `after` on.

    Return how many were selected, how many deleted, and the last finish time seen.
    """
    query = (
        select(tasks.c.id, tasks.c.finished_at)
        .where(tasks.c.finished_at < cutoff, _finished(conn.dialect.name), ~_has_unfinished())
        .order_by(tasks.c.finished_at)
        .limit(chunk)
        # PostgreSQL: a submission holds FOR SHARE on the dependencies it names, so a
        # task about to gain a dependent is skipped, and ours cannot gain one once locked.
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        query = query.where(tasks.c.finished_at >= after)
    rows = conn.execute(query).all()
    if not rows:
        return 0, 0, after
    ids = [row.id for row in rows]
    if conn.dialect.name == "postgresql":
        # The locking read saw a snapshot from before the locks; look again now that no
        # new dependent can arrive (SQLite's write lock already rules that out).
        ids = _still_prunable(conn, ids)
    for part in chunks(ids):
        # Both directions, explicitly: the cascade would do it, but only where the foreign
        # keys are enforced.
        edges = or_(deps.c.task_id.in_(part), deps.c.dependency_id.in_(part))
        conn.execute(delete(deps).where(edges))
        conn.execute(delete(tasks).where(tasks.c.id.in_(part)))
    return len(rows), len(ids), rows[-1].finished_at


def _finished(dialect: str) -> Any:
    """Return `status IN (terminal statuses)`, so marked on SQLite that it walks by time.

    Told nothing, SQLite's planner takes the status index and sorts every finished task
    by `finished_at` for each chunk; marked as filtering little, the status term leaves it
    the `ix_tasks_finished_at` range, already in order.
    """
    if dialect == "sqlite":
        statuses = ", ".join(f"'{status}'" for status in TERMINAL)
        return text(f"likelihood(tasks.status IN ({statuses}), 0.99)")
    return tasks.c.status.in_(TERMINAL)


def _has_unfinished() -> Any:
    """Return `EXISTS` an unfinished task that depends on the outer task row."""
    dependent = tasks.alias("dependent")
    return exists(
        select(deps.c.task_id)
        .join(dependent, dependent.c.id == deps.c.task_id)
        .where(deps.c.dependency_id == tasks.c.id, dependent.c.status.in_(UNFINISHED))
    )


def _still_prunable(conn: Connection, ids: Sequence[str]) -> list[str]:
    """Return those of `ids` that no unfinished task depends on, read afresh."""
    kept: list[str] = []
    for part in chunks(ids):
        query = select(tasks.c.id).where(tasks.c.id.in_(part), ~_has_unfinished())
        kept.extend(task_id for (task_id,) in conn.execute(query))
    return kept


def _naive_utc(moment: datetime) -> datetime:
    """Return `moment` as the naive UTC time stored in the database."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
