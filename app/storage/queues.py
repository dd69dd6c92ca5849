"""Queues as stored, and what a scheduler pass asks of them before it claims.

Every queue a task names has a row, but for `default`, which is open and unlimited until
someone sets it. A pass reads the rows (a few, whatever the number of tasks) and claims
queue by queue through the queue-led ready index, leaving out the paused queues and
capping each walk at what its queue may start now: its concurrency limit less its RUNNING
tasks, and the whole tokens of its rate bucket.
On PostgreSQL the rows of limited queues are locked first (and read again under the
lock), so that two instances never both count the same free slot or token.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection

from app.storage.database import advisory_lock, driver_execute
from app.storage.jsonsets import param
from app.storage.models import DEFAULT_QUEUE
from app.storage.scheduler_sql import QUEUES_LOCK_KEY, bound_time

# Held shared by the transactions storing tasks in queues other than default, alone by a
# queue's deletion.
NAMES_IN_USE_KEY = zlib.crc32(b"task-scheduler:queue-names-in-use")


class QueueRow(NamedTuple):
    """A queue's settings and the state of its rate bucket."""

    name: str
    paused: bool
    concurrency_limit: int | None
    rate_limit_per_s: float | None
    tokens: float | None
    tokens_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None

    @property
    def bounded(self) -> bool:
        """Whether a claim must count what it takes from this queue."""
        return self.concurrency_limit is not None or self.rate_limit_per_s is not None

    def held(self, now: datetime) -> float:
        """Return the tokens its bucket holds at `now` (0 without a rate limit)."""
        rate = self.rate_limit_per_s
        if rate is None:
            return 0.0
        burst = max(1.0, rate)
        if self.tokens is None or self.tokens_at is None:
            return burst
        elapsed = max(0.0, (now - self.tokens_at).total_seconds())
        return min(burst, self.tokens + elapsed * rate)


_COLUMNS = (
    "name, paused, concurrency_limit, rate_limit_per_s, tokens, tokens_at, created_at, updated_at"
)


# Every queue's row: what a scheduler pass reads first.
ALL_ROWS_SQL = f"SELECT {_COLUMNS} FROM queues ORDER BY name"


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _row(values: Sequence[Any]) -> QueueRow:
    name, paused, limit, rate, tokens, tokens_at, created, updated = values
    return QueueRow(
        name, bool(paused), limit, rate, tokens, _time(tokens_at), _time(created), _time(updated)
    )


def rows(
    conn: Connection, names: Sequence[str] | None = None, *, lock: bool = False
) -> list[QueueRow]:
    """Return the stored queues (only `names`, if given), by name.

    With `lock`, on PostgreSQL, the rows are locked for the rest of the transaction (in
    name order, so that two lockers never wait on each other crosswise).
    """
    d = conn.dialect.name
    params: dict[str, Any] = {}
    where = ""
    if names is not None:
        if not names:
            return []
        params = {f"n{k}": name for k, name in enumerate(names)}
        where = f" WHERE name IN ({', '.join(param(d, f'n{k}') for k in range(len(names)))})"
    locking = " FOR UPDATE" if lock and d == "postgresql" else ""
    sql = ALL_ROWS_SQL.replace(" ORDER BY", f"{where} ORDER BY") + locking
    return [_row(r) for r in driver_execute(conn, sql, params)[0]]


def running(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    """Return how many tasks of each queue in `names` are RUNNING: read through the
    partial index of RUNNING tasks, as many as the instances' slots at most."""
    if not names:
        return {}
    d = conn.dialect.name
    params = {f"n{k}": name for k, name in enumerate(names)}
    listed = ", ".join(param(d, f"n{k}") for k in range(len(names)))
    sql = (
        "SELECT queue, count(*) FROM tasks WHERE status = 'RUNNING'"
        f" AND queue IN ({listed}) GROUP BY queue"
    )
    return {queue: int(n) for queue, n in driver_execute(conn, sql, params)[0]}


def register(conn: Connection, names: Sequence[str], now: datetime) -> list[str]:
    """Add a row for each queue in `names` that has none; return the names added."""
    d = conn.dialect.name
    added = []
    for name in sorted(set(names)):
        sql = (
            "INSERT INTO queues (name, paused, created_at, updated_at)"
            f" VALUES ({param(d, 'n')}, {param(d, 'f')}, {param(d, 'now')}, {param(d, 'now')})"
            " ON CONFLICT (name) DO NOTHING RETURNING name"
        )
        params = {"n": name, "f": False, "now": bound_time(d, now)}
        if driver_execute(conn, sql, params)[0]:
            added.append(name)
    return added


def count(conn: Connection) -> int:
    """Return how many queues have a row."""
    return int(driver_execute(conn, "SELECT count(*) FROM queues")[0][0][0])


def hold(conn: Connection) -> None:
    """Take the queues' lock alone, on PostgreSQL: wait for the claims under way to
    commit, and hold back those after until this transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(%(key)s, CAST(CAST('tasks' AS regclass) AS oid)::int)",
            {"key": QUEUES_LOCK_KEY},
        )


def share_names(conn: Connection) -> None:
    """Take the queue names' lock shared, on PostgreSQL, until the transaction ends: what
    a transaction storing tasks in named queues holds, so that no queue it names is
    deleted before it commits. Only a deletion takes it alone (`hold_names`): pauses,
    limits and claims never wait for it."""
    if conn.dialect.name == "postgresql":
        advisory_lock(conn, NAMES_IN_USE_KEY, shared=True)


def hold_names(conn: Connection) -> None:
    """Take the queue names' lock alone, on PostgreSQL: wait for the submissions naming
    queues under way to commit, and hold back those after until this transaction ends."""
    if conn.dialect.name == "postgresql":
        advisory_lock(conn, NAMES_IN_USE_KEY)


def remove(conn: Connection, name: str) -> None:
    """Delete the row of the queue `name`."""
    sql = f"DELETE FROM queues WHERE name = {param(conn.dialect.name, 'n')}"
    driver_execute(conn, sql, {"n": name})


def update(conn: Connection, name: str, now: datetime, **values: Any) -> None:
    """Set columns of the queue `name`, whose row exists."""
    d = conn.dialect.name
    values["updated_at"] = now
    assignments = ", ".join(f"{column} = {param(d, column)}" for column in values)
    params = {c: bound_time(d, v) if isinstance(v, datetime) else v for c, v in values.items()}
    params["queue_name"] = name
    sql = f"UPDATE queues SET {assignments} WHERE name = {param(d, 'queue_name')}"
    driver_execute(conn, sql, params)


@dataclass(frozen=True)
class Walks:
    """What one pass may claim, queue by queue."""

    # Each queue it may claim from, with the most it may start from it now.
    caps: list[tuple[str, int]]
    # The rate-limited queues among them, with the tokens each bucket holds now.
    buckets: dict[str, float]
    # When a rate-limited queue out of tokens gets its next one.
    next_token_at: datetime | None


def walks(
    conn: Connection,
    now: datetime,
    limit: int,
    served: Sequence[str] = (),
    read: Sequence[Sequence[Any]] | None = None,
) -> Walks:
    """Return the queues a pass of an instance serving `served` (empty: every queue) may
    claim from now, each with the most it may start (at most `limit`). `read`: the queues'
    rows, if the pass read them already (scheduler_sql.promote_reading_queues)."""
    stored = rows(conn) if read is None else [_row(r) for r in read]
    by_name = {r.name: r for r in stored}
    names = list(served) if served else sorted({DEFAULT_QUEUE, *by_name})
    bounded = [n for n in names if n in by_name and by_name[n].bounded and not by_name[n].paused]
    if bounded and conn.dialect.name == "postgresql":
        by_name.update((r.name, r) for r in rows(conn, bounded, lock=True))
    limited = [n for n in bounded if by_name[n].concurrency_limit is not None]
    started = running(conn, limited)
    caps: list[tuple[str, int]] = []
    buckets: dict[str, float] = {}
    next_token_at: datetime | None = None
    for name in names:
        row = by_name.get(name)
        most = limit
        if row is not None:
            if row.paused:
                continue
            if row.concurrency_limit is not None:
                most = min(most, row.concurrency_limit - started.get(name, 0))
            if row.rate_limit_per_s is not None:
                held = buckets[name] = row.held(now)
                most = min(most, math.floor(held))
                if held < 1:
                    due = now + timedelta(seconds=(1 - held) / row.rate_limit_per_s)
                    next_token_at = due if next_token_at is None else min(next_token_at, due)
        if most > 0:
            caps.append((name, most))
    return Walks(caps, buckets, next_token_at)


def spend(conn: Connection, plan: Walks, claimed: Sequence[str], now: datetime) -> None:
    """Take a token from its bucket for each task claimed (`claimed` lists their queues)."""
    d = conn.dialect.name
    # The bucket's time never goes back: a clock stepped back refills nothing until it
    # passes the last spend again.
    sql = (
        f"UPDATE queues SET tokens = {param(d, 'tokens')}, tokens_at = CASE WHEN tokens_at IS NULL"
        f" OR tokens_at < {param(d, 'at')} THEN {param(d, 'at')} ELSE tokens_at END"
        f" WHERE name = {param(d, 'n')}"
    )
    for name, held in plan.buckets.items():
        taken = sum(1 for queue in claimed if queue == name)
        if taken:
            driver_execute(conn, sql, {"tokens": held - taken, "at": bound_time(d, now), "n": name})
