"""Counting tasks: by status for the dashboard and /metrics, by queue and status for the
queues' list, QUEUED ones for the queue limit, and the members of a batch.

The counts are read from `task_counts` plus the deltas not yet folded into it,
which the triggers of app/storage/count_triggers.py keep: a few rows whatever the number
of tasks, and exact in the reader's snapshot, since every change of a task's status
commits (or not) with its count.
"""

from __future__ import annotations

import zlib
from datetime import datetime

from sqlalchemy import Connection, Engine, func, select, text, union_all

from app.statuses import Status
from app.storage import database
from app.storage.tables import count_deltas, task_counts, tasks

# Submitters that enforce MAX_QUEUED_TASKS on PostgreSQL queue on this transaction lock,
# so that two of them cannot both count the same free room.
QUEUE_LOCK_KEY = zlib.crc32(b"task-scheduler:max-queued-tasks")
# One fold at a time on PostgreSQL; an instance that finds another folding skips its turn.
FOLD_LOCK_KEY = zlib.crc32(b"task-scheduler:fold-task-counts")

_COUNTED = union_all(
    select(task_counts.c.queue, task_counts.c.status, task_counts.c.n),
    select(count_deltas.c.queue, count_deltas.c.status, count_deltas.c.n),
).subquery("counted")
_BY_STATUS = select(_COUNTED.c.status, func.sum(_COUNTED.c.n)).group_by(_COUNTED.c.status)
_BY_QUEUE = select(_COUNTED.c.queue, _COUNTED.c.status, func.sum(_COUNTED.c.n)).group_by(
    _COUNTED.c.queue, _COUNTED.c.status
)
_QUEUED = select(func.coalesce(func.sum(_COUNTED.c.n), 0)).where(
    _COUNTED.c.status == Status.QUEUED.value
)

# Deletes the deltas this transaction sees and adds them to the rows per status, in one
# statement: a delta is either still in task_count_deltas or already in task_counts, in
# every snapshot. Rows per queue and status are upserted in key order.
_FOLD = text(
    """
    WITH moved AS (DELETE FROM task_count_deltas RETURNING queue, status, n),
    folded AS (
        INSERT INTO task_counts (queue, status, n)
        SELECT queue, status, sum(n) FROM moved GROUP BY queue, status
        ORDER BY queue, status
        ON CONFLICT (queue, status) DO UPDATE SET n = task_counts.n + excluded.n
    )
    SELECT count(*) FROM moved
    """
)


def by_status(conn: Connection) -> dict[str, int]:
    """Return `{status: count}` for every status, zeros included, from the counts rows."""
    found = {s.value: 0 for s in Status}
    for status, count in conn.execute(_BY_STATUS):
        found[status] = int(count)
    return found


def by_queue(conn: Connection) -> dict[str, dict[str, int]]:
    """Return `{queue: {status: count}}` for every queue that has tasks, zeros included
    (a queue whose rows all count 0 has none: it is left out)."""
    found: dict[str, dict[str, int]] = {}
    for queue, status, count in conn.execute(_BY_QUEUE):
        found.setdefault(queue, {s.value: 0 for s in Status})[status] = int(count)
    return {queue: by for queue, by in found.items() if any(by.values())}


def forget_queue(conn: Connection, queue: str) -> None:
    """Delete the counts rows (and deltas) of a queue that holds no task: all zeros."""
    for table in (task_counts, count_deltas):
        conn.execute(table.delete().where(table.c.queue == queue))


def hold_queue(conn: Connection) -> None:
    """Take the queue's lock before counting the QUEUED tasks, on PostgreSQL.

    Held to the end of the transaction; SQLite's write lock already serialises.
    """
    if conn.dialect.name == "postgresql":
        database.advisory_lock(conn, QUEUE_LOCK_KEY)


def queued(conn: Connection) -> int:
    """Return how many tasks are QUEUED, from the counts rows."""
    return int(conn.execute(_QUEUED).scalar_one())


def fold(engine: Engine) -> int:
    """Move the deltas PostgreSQL's triggers appended into the rows per status; return
    how many went (0 on SQLite, whose triggers write the rows per status directly).

    Readers add the deltas to the rows, so a fold changes no count; it keeps the deltas
    few, and so the reads quick. When another instance is folding, this one skips.
    """
    if engine.dialect.name != "postgresql":
        return 0
    with database.write(engine) as conn:
        if not database.advisory_lock(conn, FOLD_LOCK_KEY, wait=False):
            return 0
        return int(conn.execute(_FOLD).scalar_one())


def in_batch(conn: Connection, batch_id: str, created_at: datetime | None = None) -> int:
    """Return how many tasks the batch `batch_id` has (created at `created_at`, if given)."""
    query = select(func.count()).select_from(tasks).where(tasks.c.batch_id == batch_id)
    if created_at is not None:
        query = query.where(tasks.c.created_at == created_at)
    return int(conn.execute(query).scalar_one())
