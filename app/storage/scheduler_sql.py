"""The statements every scheduler pass runs, as plain SQL for each database.

Building these statements through SQLAlchemy's expression language cost more than the
commit itself (about 0.3 ms each, for a few tens of microseconds of SQLite work). They are
written out here once per dialect and sent to the driver as they are; the placeholders
follow the driver's style (`:name` for sqlite3, `%(name)s` for psycopg).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Connection

from app.storage.database import driver_execute, sqlite_time
from app.storage.tables import chunks, status_filter

# As the ready and delayed indexes' predicates say it on each backend (models.PG_QUEUED).
_QUEUED = {
    dialect: status_filter("tasks", "QUEUED", dialect) for dialect in ("sqlite", "postgresql")
}
_NOW = {"sqlite": "{p}now", "postgresql": "timezone('UTC', clock_timestamp())"}
_LOCK_READY = {"sqlite": "", "postgresql": " FOR UPDATE SKIP LOCKED"}
_SHARE = {"sqlite": "", "postgresql": " FOR SHARE"}
# Index walks per claim statement at most.
MAX_WALKS = 200

_CLAIMED = (
    "tasks.seq, tasks.id, tasks.type, tasks.duration_ms, tasks.payload, tasks.attempts,"
    " tasks.failures, tasks.max_attempts, tasks.retry_backoff_ms, tasks.timeout_ms,"
    " tasks.priority, tasks.queue, tasks.started_at"
)
# Seconds from the task's creation to this start: the queue wait the metrics observe.
_WAITED = {
    "sqlite": "(julianday(tasks.started_at) - julianday(tasks.created_at)) * 86400.0",
    "postgresql": "EXTRACT(EPOCH FROM tasks.started_at - tasks.created_at)::float8",
}


def _p(dialect: str, name: str) -> str:
    return f":{name}" if dialect == "sqlite" else f"%({name})s"


def _list(dialect: str, prefix: str, count: int) -> str:
    return ", ".join(_p(dialect, f"{prefix}{i}") for i in range(count))


def bound_time(dialect: str, moment: datetime) -> Any:
    """Return `moment` as a statement's parameter: on SQLite the text SQLAlchemy's
    DateTime writes, so that both kinds of writes compare alike."""
    return sqlite_time(moment) if dialect == "sqlite" else moment


def _stamp(dialect: str) -> str:
    return _NOW[dialect].format(p=":" if dialect == "sqlite" else "")


# The rows the walk chose, found by their key. On PostgreSQL an array built once: as a
# join, stale statistics could make the planner drive it from a status index instead.
_BY_SEQ = {
    "sqlite": " FROM ready WHERE tasks.seq = ready.seq",
    "postgresql": " WHERE tasks.seq = ANY (ARRAY(SELECT seq FROM ready))",
}
# On SQLite the claim itself asks whether its worker is registered (the write lock keeps
# the answer true until the commit): a pass that claims what it asked for needs no
# statement of its own for it. PostgreSQL asks first, holding the row (`is_member`).
_MEMBER = {
    "sqlite": " AND EXISTS (SELECT 1 FROM scheduler_instances WHERE id = :w)",
    "postgresql": "",
}


# On PostgreSQL a claim holds this lock shared, and a change of a queue's pause or limits
# holds it alone: a change waits for the claims under way to commit, and the claims after
# it read what it wrote, so that no task starts in a queue once its pause is answered.
QUEUES_LOCK_KEY = zlib.crc32(b"task-scheduler:queues") - (1 << 31)
_QUEUES_LOCK = (
    f"pg_advisory_xact_lock_shared({QUEUES_LOCK_KEY}, CAST(CAST('tasks' AS regclass) AS oid)::int)"
)


def is_member(conn: Connection, worker: str) -> bool:
    """Tell whether `worker` is registered, holding its row against a concurrent reap (and,
    on PostgreSQL, the queues' lock shared for the rest of the claim)."""
    d = conn.dialect.name
    held = f", {_QUEUES_LOCK}" if d == "postgresql" else ""
    sql = f"SELECT id{held} FROM scheduler_instances WHERE id = {_p(d, 'w')}{_SHARE[d]}"
    return bool(driver_execute(conn, sql, {"w": worker})[0])


def _ready(d: str, excluded: int, *filters: str, limit: str = "limit") -> str:
    """Return the walk of the ready index (or of one queue's, one type's part of it), best
    first; `filters` name the parameters holding its queue and then its type."""
    # Tasks whose earlier attempt still occupies one of the claimer's threads.
    skip = f" AND tasks.id NOT IN ({_list(d, 'x', excluded)})" if excluded else ""
    columns = ("tasks.queue", "tasks.type")
    narrowed = "".join(f" AND {c} = {_p(d, f)}" for c, f in zip(columns, filters, strict=False))
    return (
        f"SELECT seq, priority FROM tasks WHERE {_QUEUED[d]} AND tasks.pending_deps = 0{narrowed}"
        f" AND tasks.not_before IS NULL{skip}"
        f" ORDER BY tasks.priority DESC, tasks.seq LIMIT {_p(d, limit)}{_LOCK_READY[d]}"
    )


def _best(d: str, parts: list[str], limit: str) -> str:
    """Return the best `limit` of the walks named `parts`, best first."""
    union = " UNION ALL ".join(f"SELECT seq, priority FROM {part}" for part in parts)
    return (
        f"SELECT seq, priority FROM ({union}) AS c"
        f" ORDER BY c.priority DESC, c.seq LIMIT {_p(d, limit)}"
    )


def _due_sql(d: str) -> str:
    """Return the walk of the delayed tasks now due, earliest first."""
    return (
        f"SELECT seq FROM tasks WHERE {_QUEUED[d]} AND tasks.pending_deps = 0"
        f" AND tasks.not_before IS NOT NULL AND tasks.not_before <= {_p(d, 'now')}"
        f" ORDER BY tasks.not_before LIMIT {_p(d, 'limit')}{_LOCK_READY[d]}"
    )


@cache
def promote_sql(d: str) -> str:
    """Return the statement that makes the delayed tasks now due ready, earliest first.

    It walks `ix_tasks_delayed` from its start and stops at the first task not yet due,
    so with nothing due it costs one index probe. On PostgreSQL it passes over rows another
    transaction holds (another instance promoting the same ones, or a cancel): it never
    waits on a lock, so it cannot deadlock with a claim or a cascade; whoever holds the row
    promotes it, or the next pass does.
    """
    due = _due_sql(d)
    if d == "sqlite":
        # Led by UPDATE, so that sqlite3 counts the rows it changed.
        return f"UPDATE tasks SET not_before = NULL WHERE tasks.seq IN ({due})"
    # Materialized, so that the locking walk runs once (see claim_sql).
    return (
        f"WITH due AS MATERIALIZED ({due})"
        " UPDATE tasks SET not_before = NULL FROM due WHERE tasks.seq = due.seq"
    )


def promote(conn: Connection, now: datetime, limit: int) -> int:
    """Clear `not_before` of up to `limit` tasks due by `now`; return how many."""
    d = conn.dialect.name
    params = {"now": bound_time(d, now), "limit": limit}
    return driver_execute(conn, promote_sql(d), params)[1]


# The queues' rows as `queues.ALL_ROWS_SQL` reads them, from the alias `q`.
QUEUE_COLUMNS = (
    "q.name, q.paused, q.concurrency_limit, q.rate_limit_per_s, q.tokens, q.tokens_at,"
    " q.created_at, q.updated_at"
)


@cache
def promote_reading_queues_sql() -> str:
    """Return PostgreSQL's promotion that also reads every queue's row: one round trip
    for both, in a statement after the one that took the queues' lock shared, so that
    it sees every change of a queue committed before (a row per queue, the number
    promoted on each; one row of nulls but that number when there is no queue)."""
    return (
        f"WITH due AS MATERIALIZED ({_due_sql('postgresql')}),"
        " moved AS (UPDATE tasks SET not_before = NULL FROM due WHERE tasks.seq = due.seq"
        f" RETURNING 1) SELECT (SELECT count(*) FROM moved), {QUEUE_COLUMNS}"
        " FROM (SELECT 1) AS one LEFT JOIN queues AS q ON true ORDER BY q.name"
    )


def promote_reading_queues(
    conn: Connection, now: datetime, limit: int
) -> tuple[int, list[tuple[Any, ...]]]:
    """Promote as `promote` does and read the queues' rows, in one statement
    (PostgreSQL); return how many were promoted and the rows."""
    params = {"now": now, "limit": limit}
    rows = driver_execute(conn, promote_reading_queues_sql(), params)[0]
    promoted = int(rows[0][0]) if rows else 0
    return promoted, [tuple(r[1:]) for r in rows if r[1] is not None]


@lru_cache(maxsize=512)
def claim_sql(d: str, excluded: int = 0, types: int = 0, queues: int = 1) -> str:
    """Return the claim statement for dialect `d`, passing over `excluded` ids.

    It claims from `queues` given queues (`q0`...), at most `l0`... from each: each queue's
    best ready tasks are read from its own part of the queue-led ready index, so the tasks
    of a paused or full queue (which the caller leaves out) are never walked. With `types`,
    only tasks of that many given types (`t0`...): one walk per queue and type, through the
    index led by both. The best `limit` of the walks are claimed. On PostgreSQL each walk
    locks what it reads; what the claim does not take is released at its commit.
    """
    # Materialized CTEs: as `seq IN (subquery)`, PostgreSQL may rescan the locking
    # subquery once per row and so claim more than `limit` tasks.
    if queues == 1 and not types:
        # One queue (the usual case): its walk is the claim's, capped by the caller.
        ready = f"WITH ready AS MATERIALIZED ({_ready(d, excluded, 'q0', limit='l0')})"
    else:
        walks: list[str] = []
        for k in range(queues):
            if types:
                for j in range(types):
                    walk = _ready(d, excluded, f"q{k}", f"t{j}", limit=f"l{k}")
                    walks.append(f"q{k}t{j} AS MATERIALIZED ({walk})")
                parts = [f"q{k}t{j}" for j in range(types)]
                walks.append(f"q{k} AS MATERIALIZED ({_best(d, parts, f'l{k}')})")
            else:
                walk = _ready(d, excluded, f"q{k}", limit=f"l{k}")
                walks.append(f"q{k} AS MATERIALIZED ({walk})")
        best = _best(d, [f"q{k}" for k in range(queues)], "limit")
        ready = f"WITH {', '.join(walks)}, ready AS MATERIALIZED ({best})"
    return (
        f"{ready}"
        " UPDATE tasks SET status = 'RUNNING', attempts = tasks.attempts + 1,"
        f" worker = {_p(d, 'w')}, started_at = {_stamp(d)}, updated_at = {_stamp(d)},"
        " finished_at = NULL, result = NULL, error = NULL, error_code = NULL"
        f"{_BY_SEQ[d]} AND {status_filter('tasks', 'QUEUED', d)}"
        f" AND tasks.pending_deps = 0{_MEMBER[d]}"
        f" RETURNING {_CLAIMED}, {_WAITED[d]} AS waited"
    )


class Claimed(NamedTuple):
    """A row the claim moved to RUNNING: `_CLAIMED`, then the wait before this start."""

    seq: int
    id: str
    type: str
    duration_ms: int
    payload: Any
    attempts: int
    failures: int
    max_attempts: int
    retry_backoff_ms: int
    timeout_ms: int | None
    priority: int
    queue: str
    started_at: Any
    waited: float | None


def claim(
    conn: Connection,
    worker: str,
    limit: int,
    now: datetime,
    queues: Sequence[tuple[str, int]],
    exclude: Sequence[str] = (),
    types: Sequence[str] = (),
) -> list[Claimed]:
    """Move up to `limit` ready tasks to RUNNING for `worker`: from `queues` only, each
    given with the most it may start, and of `types` only, when given."""
    d = conn.dialect.name
    params: dict[str, Any] = {"now": bound_time(d, now), "w": worker}
    params.update((f"x{k}", task_id) for k, task_id in enumerate(exclude))
    params.update((f"t{k}", task_type) for k, task_type in enumerate(types))
    # Past MAX_WALKS walks a statement (SQLite takes 500 terms of a compound SELECT), the
    # queues are claimed from in turns, best first within each turn.
    per_statement = max(1, MAX_WALKS // max(1, len(types)))
    found: list[Claimed] = []
    for part in chunks(list(queues), per_statement):
        wanted = limit - len(found)
        if wanted <= 0:
            break
        part_params = {**params, "limit": wanted}
        for k, (queue, most) in enumerate(part):
            part_params[f"q{k}"] = queue
            part_params[f"l{k}"] = min(most, wanted)
        sql = claim_sql(d, len(exclude), len(types), len(part))
        found.extend(map(Claimed._make, driver_execute(conn, sql, part_params)[0]))
    return sorted(found, key=lambda r: (-r.priority, r.seq))


def payload_of(value: Any) -> Any:
    """Return a stored payload as an object (SQLite hands back its JSON text)."""
    if value == "{}":
        return {}  # the usual payload, a dict of its own for each handler
    return json.loads(value) if isinstance(value, str) else value


def _attempts_of(d: str, n: int) -> str:
    """The fence of `n` running attempts of one worker: rows RUNNING for `:w` whose id is
    `:i<k>` and whose attempt is still `:a<k>`."""
    fence = " ".join(f"WHEN {_p(d, f'i{k}')} THEN {_p(d, f'a{k}')}" for k in range(n))
    return (
        f"tasks.id IN ({_list(d, 'i', n)}) AND tasks.worker = {_p(d, 'w')}"
        f" AND {status_filter('tasks', 'RUNNING', d)}"
        f" AND tasks.attempts = CASE tasks.id {fence} END"
    )


@lru_cache(maxsize=512)
def complete_sql(d: str, n: int) -> str:
    """Return the statement completing `n` (id, attempt) pairs for dialect `d`.

    On PostgreSQL the same statement adds their history rows (one round trip); SQLite,
    which has no data-modifying CTE, leaves them to a statement of its own.
    """
    update = (
        "UPDATE tasks SET status = 'COMPLETED', result = NULL, error = NULL,"
        f" error_code = NULL, finished_at = {_stamp(d)}, updated_at = {_stamp(d)}"
        f" WHERE {_attempts_of(d, n)}"
    )
    if d == "sqlite":
        return update + " RETURNING tasks.id, tasks.attempts"
    return (
        f"WITH done AS ({update} RETURNING tasks.id, tasks.attempts, tasks.started_at,"
        " tasks.finished_at), kept AS (INSERT INTO task_attempts (task_id, attempt,"
        " instance, host, started_at, finished_at, outcome) SELECT id, attempts,"
        f" {_p(d, 'w')}, {_p(d, 'host')}, started_at, finished_at, 'COMPLETED' FROM done)"
        " SELECT id, attempts FROM done"
    )


@lru_cache(maxsize=512)
def requeue_sql(d: str, n: int) -> str:
    """Return the statement putting `n` (id, attempt) pairs of one worker back to QUEUED,
    those a user asked to stop left alone, in dialect `d`."""
    false = "0" if d == "sqlite" else "false"
    return (
        "UPDATE tasks SET status = 'QUEUED', finished_at = NULL,"
        f" updated_at = {_stamp(d)}"
        f" WHERE {_attempts_of(d, n)} AND tasks.cancel_requested = {false} RETURNING tasks.id"
    )


def requeue(
    conn: Connection, worker: str, attempts: Sequence[tuple[str, int]], now: datetime
) -> set[str]:
    """Put back to QUEUED the given (id, attempt) pairs of `worker` that still hold and
    that no user asked to stop; return the ids put back."""
    d = conn.dialect.name
    params: dict[str, Any] = {"w": worker, "now": bound_time(d, now)}
    for k, (task_id, attempt) in enumerate(attempts):
        params[f"i{k}"] = task_id
        params[f"a{k}"] = attempt
    return {row[0] for row in driver_execute(conn, requeue_sql(d, len(attempts)), params)[0]}


@lru_cache(maxsize=512)
def completed_history_sql(n: int) -> str:
    """Return SQLite's statement adding the history rows of `n` attempts its completion
    statement just completed, read from their rows (`:w`, `:host`, ids `:i0`...)."""
    return (
        "INSERT INTO task_attempts (task_id, attempt, instance, host, started_at,"
        " finished_at, outcome) SELECT id, attempts, :w, :host, started_at, finished_at,"
        f" 'COMPLETED' FROM tasks WHERE tasks.id IN ({_list('sqlite', 'i', n)})"
    )


def complete(
    conn: Connection,
    worker: str,
    attempts: Sequence[tuple[str, int]],
    now: datetime,
    host: str | None = None,
) -> set[tuple[str, int]]:
    """Complete the given (id, attempt) pairs of `worker` that still hold, and add their
    history rows (run on `host`); return those completed.

    The history rows are read from the completed rows by the database: on PostgreSQL in
    the completion's own statement, on SQLite in one right after it, inside the same
    transaction (the write lock keeps the rows as the completion left them).
    """
    d = conn.dialect.name
    sql = complete_sql(d, len(attempts))
    params: dict[str, Any] = {"w": worker, "now": bound_time(d, now), "host": host}
    for k, (task_id, attempt) in enumerate(attempts):
        params[f"i{k}"] = task_id
        params[f"a{k}"] = attempt
    rows = driver_execute(conn, sql, params)[0]
    if rows and d == "sqlite":
        done: dict[str, Any] = {"w": worker, "host": host}
        done.update((f"i{k}", task_id) for k, (task_id, _) in enumerate(rows))
        driver_execute(conn, completed_history_sql(len(rows)), done)
    return {(task_id, attempt) for task_id, attempt in rows}


@lru_cache(maxsize=512)
def count_down_sql(d: str, n: int) -> str:
    """Return the statement counting down the dependents of `n` ended tasks."""
    ids = _list(d, "e", n)
    return (
        "UPDATE tasks SET pending_deps = tasks.pending_deps - (SELECT count(*)"
        " FROM task_dependencies AS e WHERE e.task_id = tasks.id"
        f" AND e.dependency_id IN ({ids}))"
        " WHERE tasks.id IN (SELECT task_id FROM task_dependencies"
        f" WHERE dependency_id IN ({ids})) AND {status_filter('tasks', 'QUEUED', d)}"
        " RETURNING tasks.pending_deps"
    )


def count_down(conn: Connection, ended: Sequence[str]) -> int:
    """Take the ended tasks off their QUEUED dependents' counts; return how many reach 0."""
    sql = count_down_sql(conn.dialect.name, len(ended))
    params = {f"e{k}": task_id for k, task_id in enumerate(ended)}
    return sum(1 for (pending,) in driver_execute(conn, sql, params)[0] if pending == 0)


@cache
def next_run_at_sql(d: str) -> str:
    """Return the read of the earliest future time a task is held back to."""
    return (
        f"SELECT min(tasks.not_before) FROM tasks WHERE {_QUEUED[d]}"
        f" AND tasks.pending_deps = 0 AND tasks.not_before > {_p(d, 'now')}"
    )


def next_run_at(conn: Connection, now: datetime) -> datetime | None:
    """Return the earliest future time a ready task is held back to (run_at, backoff)."""
    d = conn.dialect.name
    ((due,),) = driver_execute(conn, next_run_at_sql(d), {"now": bound_time(d, now)})[0]
    return datetime.fromisoformat(due) if isinstance(due, str) else due
