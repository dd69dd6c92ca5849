"""The task events `GET /api/events` streams: read in order, resumed, pruned.

Each state change is a row of `task_events`, written by the transaction that made it
(database.record_changes), numbered by `seq`. A stream remembers the last number it sent
and asks for what follows; a reconnecting client names it in `Last-Event-ID`.

Numbers are handed out as rows are inserted, not as transactions commit. On SQLite writers
take turns, so every number below the highest one visible is committed or gone for good.
On PostgreSQL a transaction holding number 7 may still be open while number 8 is
committed: a reader that sent 8 and moved on would never send 7. So a reader only moves
up to its *safe point*: the highest number below which nothing is missing. A missing
number is waited out: it is either still in an open transaction (then it appears), or
its transaction rolled back (then it never will). The reader tells them apart by
transaction ids: when it first sees the hole it takes an id of its own, above every id
given before, and once every transaction older than that has ended (a snapshot's `xmin`
reached it) the hole is permanent and skipped. A transaction writes its events last,
after the task rows it changed, so it holds its transaction id before it takes its
numbers: the reader's id is above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, text

from app.storage.database import sqlite_time

# Numbers read past the safe point at most per read (an index-only walk of the key).
WALK = 5000


@dataclass(frozen=True)
class Filters:
    """Which events a stream sends: all of them, or those matching every filter given."""

    task_id: str | None = None
    batch_id: str | None = None
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()


@dataclass
class Cursor:
    """Where a stream stands: the safe point it has read up to, and the hole above it
    that it waits out on PostgreSQL, with the transaction id taken when the hole was first
    seen (`_next_transaction`).
    `sent` holds numbers above `seq` not to send: those committed before a stream that
    starts now opened (`opening`)."""

    seq: int
    hole: int | None = None
    horizon: int | None = None
    sent: frozenset[int] = frozenset()
    # Set by a read that stopped at the end of its walk: more may follow at once.
    more: bool = False


def opening(conn: Connection) -> Cursor:
    """Return the cursor of a stream that starts now: after every event committed, and
    before every number an open transaction may still commit.

    On PostgreSQL the newest committed number is not enough: a transaction that took a
    lower one may still be open, and its events come after the stream opened. So the
    cursor starts below the lowest hole among the last WALK numbers, the numbers
    committed above it set aside as already sent.
    """
    top = latest(conn)
    if conn.dialect.name != "postgresql" or top == 0:
        return Cursor(top)
    numbers = sorted(
        int(n)
        for (n,) in conn.exec_driver_sql(
            "SELECT seq FROM task_events ORDER BY seq DESC LIMIT %(walk)s", {"walk": WALK}
        )
    )
    for below, above in pairwise(numbers):
        if above != below + 1:
            return Cursor(below, sent=frozenset(n for n in numbers if n > below))
    return Cursor(top)


def latest(conn: Connection) -> int:
    """Return the highest event number stored (0 when none): where a new stream starts."""
    found = conn.exec_driver_sql("SELECT max(seq) FROM task_events").scalar()
    return int(found or 0)


def read(
    conn: Connection, cursor: Cursor, filters: Filters, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Return the events after `cursor` up to its safe point that match `filters` (at
    most `limit`), advancing the cursor past what they cover; and whether a hole holds
    the cursor back (read again soon: a rollback sends no notification)."""
    cursor.more = False
    safe = _safe_point(conn, cursor)
    if safe <= cursor.seq:
        return [], cursor.hole is not None
    where = ["e.seq > :after", "e.seq <= :safe"]
    params: dict[str, Any] = {"after": cursor.seq, "safe": safe, "limit": limit}
    if filters.task_id is not None:
        where.append("e.task_id = :task")
        params["task"] = filters.task_id
    if filters.batch_id is not None:
        where.append("t.batch_id = :batch")
        params["batch"] = filters.batch_id
    for name, values in (("type", filters.types), ("status", filters.statuses)):
        if values:
            marks = ", ".join(f":{name}{k}" for k in range(len(values)))
            where.append(f"e.{name} IN ({marks})")
            params.update({f"{name}{k}": v for k, v in enumerate(values)})
    sql = (
        "SELECT e.seq, e.at, e.task_id, e.type, e.attempt, e.status, e.reason, t.batch_id"
        " FROM task_events e LEFT JOIN tasks t ON t.id = e.task_id"
        f" WHERE {' AND '.join(where)} ORDER BY e.seq LIMIT :limit"
    )
    rows = [dict(r._mapping) for r in conn.execute(text(sql), params)]
    # A full page may stop short of the safe point: the next read goes on from its end.
    if len(rows) == limit:
        safe, cursor.more = rows[-1]["seq"], True
    cursor.seq = safe
    if cursor.sent:
        rows = [row for row in rows if row["seq"] not in cursor.sent]
        cursor.sent = frozenset(n for n in cursor.sent if n > safe)
    for row in rows:
        if isinstance(row["at"], str):  # SQLite's text, as the row was written
            row["at"] = datetime.fromisoformat(row["at"])
    return rows, cursor.hole is not None


def _safe_point(conn: Connection, cursor: Cursor) -> int:
    """Return the highest number up to which nothing after `cursor` can still appear.

    Its statements come before the one that reads the rows to send: a hole's holder that
    commits after the numbers were read but before the snapshot showed it ended is seen
    by that later read, so stepping over the hole loses nothing.
    """
    if conn.dialect.name != "postgresql":
        return latest(conn)
    numbers = [
        int(n)
        for (n,) in conn.exec_driver_sql(
            "SELECT seq FROM task_events WHERE seq > %(after)s ORDER BY seq LIMIT %(walk)s",
            {"after": cursor.seq, "walk": WALK},
        )
    ]
    if not numbers:
        cursor.hole = cursor.horizon = None
        return cursor.seq
    xmin = conn.exec_driver_sql(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
    ).scalar_one()
    safe = cursor.seq
    for number in numbers:
        if number == safe + 1:
            safe = number
            continue
        hole = safe + 1
        if cursor.hole == hole and cursor.horizon is not None and xmin >= cursor.horizon:
            safe = number  # every transaction that could hold the hole has ended
            cursor.hole = cursor.horizon = None
            continue
        if cursor.hole != hole:
            cursor.hole, cursor.horizon = hole, _next_transaction(conn)
        return safe
    cursor.hole = cursor.horizon = None
    # A filter may leave a whole walk without a match: the next read goes on at once.
    cursor.more = len(numbers) == WALK
    return safe


def _next_transaction(conn: Connection) -> int:
    """Return an id above every transaction id given so far: this read's own, taken now.

    Not the snapshot's xmax: that is one past the newest transaction that *ended*, and a
    running transaction given a later id is above it, though it may hold the hole; once
    it is the oldest still running, the snapshot's xmin equals that xmax while it runs.
    Taking an id costs this read a commit record (not flushed: it wrote nothing), and
    only when a new hole is seen.
    """
    found = conn.exec_driver_sql("SELECT pg_current_xact_id()::text::bigint").scalar_one()
    return int(found)


def prune(conn: Connection, before: datetime, most: int) -> int:
    """Delete at most `most` of the oldest events, those stamped before `before`; return
    how many went (fewer than `most`: none older is left)."""
    first = conn.execute(text("SELECT min(seq) FROM task_events")).scalar()
    if first is None:
        return 0
    stamp: Any = before
    if conn.dialect.name == "sqlite":
        stamp = sqlite_time(before)
    sql = "DELETE FROM task_events WHERE seq < :end AND at < :before"
    done = conn.execute(text(sql), {"end": int(first) + most, "before": stamp})
    return int(done.rowcount)
