"""The attempts of each task that ended: one row each, written with its outcome.

A pass records every attempt it settles in one statement (a few, per chunk of rows), in
the transaction that writes their outcomes: an attempt is in the history exactly when its
outcome is on the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select

from app.storage.database import driver_execute, sqlite_time, storable
from app.storage.scheduler_sql import bound_time
from app.storage.tables import chunks, task_attempts

# What a task's history shows at most: its latest attempts.
MAX_LISTED = 100
COLUMNS = (
    "task_id",
    "attempt",
    "instance",
    "host",
    "started_at",
    "outcome",
    "error",
    "error_code",
    "traceback",
)
# Rows per statement: SQLite binds at most 32,766 parameters.
_ROWS = 200
_FINISHED = {"sqlite": "?", "postgresql": "timezone('UTC', clock_timestamp())"}


class Ended(NamedTuple):
    """An attempt that ended, as its history row records it (finished now)."""

    task_id: str
    attempt: int
    instance: str | None
    host: str | None
    started_at: Any  # as the task row holds it: a datetime, or SQLite's text
    outcome: str
    error: str | None = None
    error_code: str | None = None
    traceback: str | None = None


@lru_cache(maxsize=256)
def insert_sql(d: str, n: int) -> str:
    """Return the statement adding `n` history rows for `d`: positional parameters, the
    COLUMNS of each row in turn, then (on SQLite) the finish they share."""
    mark = "?" if d == "sqlite" else "%s"
    row = "(" + ", ".join([mark] * len(COLUMNS)) + f", {_FINISHED[d]})"
    return (
        f"INSERT INTO task_attempts ({', '.join(COLUMNS)}, finished_at)"
        f" VALUES {', '.join([row] * n)}"
    )


def record(conn: Connection, ended: Sequence[Ended], now: datetime) -> None:
    """Add the history rows of attempts that end in this transaction, finished `now`
    (on PostgreSQL, the database's clock as the row is written, like the task's own)."""
    d = conn.dialect.name
    finished = (sqlite_time(now),) if d == "sqlite" else ()
    for part in chunks(ended, _ROWS):
        params: list[Any] = []
        for task_id, attempt, instance, host, started, outcome, error, code, trace in part:
            if isinstance(started, datetime):
                started = bound_time(d, started)
            params += (task_id, attempt, instance, host, started, outcome)
            params += (storable(error), code, storable(trace), *finished)
        driver_execute(conn, insert_sql(d, len(part)), tuple(params))


def listing(conn: Connection, task_id: str) -> tuple[list[dict[str, Any]], int]:
    """Return a task's latest attempts that ended, oldest first, and how many it has."""
    total = conn.execute(
        select(func.count()).select_from(task_attempts).where(task_attempts.c.task_id == task_id)
    ).scalar_one()
    query = (
        select(task_attempts)
        .where(task_attempts.c.task_id == task_id)
        .order_by(task_attempts.c.attempt.desc())
        .limit(MAX_LISTED)
    )
    rows = [dict(r._mapping) for r in conn.execute(query)]
    rows.reverse()
    return rows, int(total)
