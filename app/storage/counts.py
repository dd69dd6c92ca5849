"""Counting tasks: by status for the dashboard and /metrics, QUEUED ones for the queue
limit, and the members of a batch."""

from __future__ import annotations

import zlib

from sqlalchemy import Connection, func, select, text

from app.statuses import Status
from app.storage.tables import tasks

# Submitters that enforce MAX_QUEUED_TASKS on PostgreSQL queue on this transaction lock,
# so that two of them cannot both count the same free room.
QUEUE_LOCK_KEY = zlib.crc32(b"task-scheduler:max-queued-tasks")

_BY_STATUS = select(tasks.c.status, func.count()).group_by(tasks.c.status)
_QUEUED = select(func.count()).select_from(tasks).where(tasks.c.status == Status.QUEUED.value)


def by_status(conn: Connection) -> dict[str, int]:
    """Return `{status: count}` for every status, zeros included, from one grouped query."""
    found = {s.value: 0 for s in Status}
    for status, count in conn.execute(_BY_STATUS):
        found[status] = int(count)
    return found


def hold_queue(conn: Connection) -> None:
    """Take the queue's lock before counting the QUEUED tasks, on PostgreSQL.

    Held to the end of the transaction; SQLite's write lock already serialises.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUEUE_LOCK_KEY})


def queued(conn: Connection) -> int:
    """Return how many tasks are QUEUED."""
    return int(conn.execute(_QUEUED).scalar_one())


def in_batch(conn: Connection, batch_id: str) -> int:
    """Return how many tasks the batch `batch_id` has."""
    query = select(func.count()).select_from(tasks).where(tasks.c.batch_id == batch_id)
    return int(conn.execute(query).scalar_one())
