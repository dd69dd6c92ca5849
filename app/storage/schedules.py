"""Schedules: their rows, and the fenced update that makes each firing happen once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.storage.tables import schedules, tasks

# The statuses of a firing's tasks that are not finished (`overlap: skip` waits for them).
UNFINISHED = ("QUEUED", "RUNNING")


def get(conn: Connection, schedule_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """Return one schedule's row as a dict, or None; with `lock`, locked until the end of
    the transaction (on PostgreSQL: SQLite runs one writer at a time)."""
    query = select(schedules).where(schedules.c.id == schedule_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return None if row is None else dict(row)


def page(conn: Connection, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Return up to `limit` schedules by id, from the first after `after`."""
    query = select(schedules).order_by(schedules.c.id).limit(limit)
    if after is not None:
        query = query.where(schedules.c.id > after)
    return [dict(row) for row in conn.execute(query).mappings()]


def add(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a schedule unless its id is taken; tell whether it was inserted.

    On PostgreSQL, an insert of the same id in flight elsewhere is waited for: once it
    commits this one finds the id taken, and a read that follows sees that row.
    """
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(schedules).values(**row).on_conflict_do_nothing()
    # RETURNING, not the row count: psycopg's pipeline leaves the count unknown (-1).
    return conn.execute(statement.returning(schedules.c.id)).first() is not None


def change(conn: Connection, schedule_id: str, version: int, values: dict[str, Any]) -> bool:
    """Update a schedule if it is still at `version`, bumping it; tell whether it was."""
    result = conn.execute(
        update(schedules)
        .where(schedules.c.id == schedule_id, schedules.c.version == version)
        .values(**values, version=version + 1)
    )
    return result.rowcount == 1


def bodies(conn: Connection) -> list[tuple[str, str, Any]]:
    """Return every schedule's id, kind and body, by id."""
    query = select(schedules.c.id, schedules.c.kind, schedules.c.body).order_by(schedules.c.id)
    return [(row.id, row.kind, row.body) for row in conn.execute(query)]


def remove(conn: Connection, schedule_id: str) -> bool:
    """Delete a schedule; tell whether there was one."""
    return conn.execute(delete(schedules).where(schedules.c.id == schedule_id)).rowcount == 1


def due(conn: Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Return up to `limit` schedules whose next firing is at or before `now`, soonest first."""
    query = (
        select(schedules)
        .where(schedules.c.next_fire_at.is_not(None), schedules.c.next_fire_at <= now)
        .order_by(schedules.c.next_fire_at)
        .limit(limit)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


def hold(conn: Connection, schedule_id: str, instant: datetime, version: int) -> bool:
    """Lock a schedule's row for this transaction if it still fires next at `instant` at
    `version`; tell whether it does.

    Taken before a firing stores anything: a second instance firing the same instant waits
    here until the first commits, then finds the row moved on (PostgreSQL checks the
    condition again on the row the first committed), and stores nothing. SQLite runs one
    writer at a time, so its check alone is enough.
    """
    query = (
        select(schedules.c.id)
        .where(
            schedules.c.id == schedule_id,
            schedules.c.next_fire_at == instant,
            schedules.c.version == version,
        )
        .with_for_update()
    )
    return conn.execute(query).first() is not None


def advance(
    conn: Connection, schedule_id: str, instant: datetime, version: int, values: dict[str, Any]
) -> bool:
    """Record what was done at `instant` and move the schedule on, if no one did first.

    The fence of exactly-once firing: only a schedule whose next firing is still `instant`
    and whose version is still `version` is updated. Another instance that fired it, an
    edit, a pause or a delete all make this refuse, and the caller stores nothing.
    """
    result = conn.execute(
        update(schedules)
        .where(
            schedules.c.id == schedule_id,
            schedules.c.next_fire_at == instant,
            schedules.c.version == version,
        )
        .values(**values)
    )
    return result.rowcount == 1


def unfinished(conn: Connection, batch_id: str) -> bool:
    """Tell whether a task of the batch `batch_id` is still QUEUED or RUNNING."""
    query = (
        select(tasks.c.seq)
        .where(tasks.c.batch_id == batch_id, tasks.c.status.in_(UNFINISHED))
        .limit(1)
    )
    return conn.execute(query).first() is not None
