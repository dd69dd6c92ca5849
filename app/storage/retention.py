"""Retention: delete finished tasks older than a cut-off, a chunk per transaction.

A finished task goes only when every task that depends on it has COMPLETED or goes with
it. A task that did not complete must keep the dependency that stopped it: a later retry
of another of its dependencies reads that one to know it still may not run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    any_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from app import faults
from app.statuses import TERMINAL, UNFINISHED, Status
from app.storage import database
from app.storage.tables import deps, tasks, weak

# Tasks deleted per transaction at most.
PRUNE_CHUNK = 1000
# How long one chunk may hold the write lock, so that writers queued behind it barely wait:
# a chunk slower than this halves the next one, one twice as fast doubles it (up to the
# chunk size asked for). The size follows the machine, the database and its indexes.
CHUNK_BUDGET_S = 0.025
MIN_CHUNK = 25
FIRST_CHUNK = 100

# The tasks table again, as the dependents and the dependencies of the tasks pruned: built
# once, since building an alias of a wide table costs as much as a small chunk's delete.
_DEPENDENT = tasks.alias("dependent")
_DEPENDENCY = tasks.alias("dependency")

Position = tuple[datetime, int]


def prune(
    engine: Engine,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    chunk: int = PRUNE_CHUNK,
    stop: threading.Event | None = None,
) -> int:
    """Delete tasks that finished before `now - older_than`; return how many went.

    Walks the finished tasks once, oldest first, in chunks of at most `chunk`, each its own
    short transaction sized to take about CHUNK_BUDGET_S; between two chunks it returns
    early once `stop` is set.
    """
    cutoff = _cutoff(engine, older_than, now)
    deleted = 0
    # Small at first: the first chunk reads its pages from disk.
    size = min(chunk, FIRST_CHUNK)
    after: Position | None = None
    while stop is None or not stop.is_set():
        began = time.monotonic()
        # By index on PostgreSQL: planning a merge join between tasks and edges, the
        # planner would read the index entries of the tasks pruned so far (dead until a
        # vacuum, and all at one end when ids ascend with time), more at every chunk.
        with database.write(engine) as conn, database.by_index(conn):
            selected, removed, after = _prune_chunk(conn, cutoff, size, after)
        deleted += removed
        faults.point("prune.chunk_committed", removed=removed, size=size)
        if selected < size:
            break
        size = next_chunk(size, time.monotonic() - began, chunk)
    return deleted


def next_chunk(size: int, took_s: float, largest: int) -> int:
    """Return the size of the chunk after one of `size` that took `took_s` seconds."""
    if took_s > CHUNK_BUDGET_S:
        return max(min(MIN_CHUNK, largest), size // 2)
    if took_s < CHUNK_BUDGET_S / 2:
        return min(largest, size * 2)
    return size


def count_prunable(
    engine: Engine, older_than: timedelta, *, now: datetime | None = None
) -> dict[str, int]:
    """Count, by status, the tasks a prune with `older_than` may delete; delete nothing.

    These are the finished tasks past the cut-off that no unfinished task depends on: an
    upper bound, since a prune also keeps a task whose dependent did not complete and
    does not go with it.
    """
    cutoff = _cutoff(engine, older_than, now)
    query = (
        select(tasks.c.status, func.count())
        .where(tasks.c.finished_at < cutoff, tasks.c.status.in_(TERMINAL), ~_has_unfinished())
        .group_by(tasks.c.status)
    )
    with database.read(engine) as conn:
        counts: dict[str, int] = {status: n for status, n in conn.execute(query)}
    return {status: counts[status] for status in TERMINAL if status in counts}


def _cutoff(engine: Engine, older_than: timedelta, now: datetime | None) -> datetime:
    """Return the naive UTC moment before which a finished task is old enough to go."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    if now is None:
        with database.read(engine) as conn:
            now = database.now(conn)  # the database's clock on PostgreSQL, as finishes use
    return database.naive_utc(now) - older_than


def _prune_chunk(
    conn: Connection, cutoff: datetime, chunk: int, after: Position | None
) -> tuple[int, int, Position | None]:
    """Delete what may go among the next `chunk` finished tasks after `after`.

    Return how many were looked at, how many deleted, and where the next chunk starts.
    """
    query = (
        select(tasks.c.id, tasks.c.finished_at, tasks.c.seq)
        .where(tasks.c.finished_at < cutoff, _finished(conn.dialect.name), ~_has_unfinished())
        .order_by(tasks.c.finished_at, tasks.c.seq)
        .limit(chunk)
        # PostgreSQL: a submission holds FOR SHARE on the dependencies it names, and a
        # retry FOR UPDATE on what it requeues: such a task is skipped, and ours cannot
        # gain a dependent nor come back once locked.
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        query = query.where(tuple_(tasks.c.finished_at, tasks.c.seq) > tuple_(*after))
    rows = conn.execute(query).all()
    if not rows:
        return 0, 0, after
    ids = [row.id for row in rows]
    if conn.dialect.name == "postgresql":
        ids = _dependencies_held(conn, ids)
    ids = removable(conn, ids)
    faults.point("prune.chunk", ids=ids)
    if ids:
        d = conn.dialect.name
        # Both directions, explicitly: the cascade would do it, but only where the foreign
        # keys are enforced.
        edges = or_(among(d, deps.c.task_id, ids), among(d, deps.c.dependency_id, ids))
        conn.execute(delete(deps).where(edges))
        conn.execute(delete(tasks).where(among(d, tasks.c.id, ids)))
    return len(rows), len(ids), (rows[-1].finished_at, rows[-1].seq)


def removable(conn: Connection, ids: Sequence[str]) -> list[str]:
    """Return those of the finished tasks `ids` that may go together.

    A task may go when each of its dependents has COMPLETED or goes too; the dependents
    are read now, after the locking read, so a change committed meanwhile is seen.
    """
    blocked_by: dict[str, set[str]] = {}
    query = (
        select(deps.c.dependency_id, deps.c.task_id)
        .join(_DEPENDENT, _DEPENDENT.c.id == deps.c.task_id)
        .where(
            among(conn.dialect.name, deps.c.dependency_id, ids),
            _DEPENDENT.c.status != Status.COMPLETED.value,
        )
    )
    for dependency_id, task_id in conn.execute(query):
        blocked_by.setdefault(dependency_id, set()).add(task_id)
    going = set(ids)
    while True:
        kept = {i for i in going if blocked_by.get(i, set()) <= going}
        if kept == going:
            return [i for i in ids if i in going]
        going = kept


def _dependencies_held(conn: Connection, ids: Sequence[str]) -> list[str]:
    """Return those of `ids` whose every dependency this transaction could hold FOR SHARE.

    A dependency another transaction is writing (a retry about to bring its dependents
    back, a finish) cannot be held without waiting: the tasks that depend on it stay for
    the next prune, rather than vanish under a retry that expects them.
    """
    wanted: dict[str, set[str]] = {}
    held: set[str] = set()
    d = conn.dialect.name
    edges = select(deps.c.task_id, deps.c.dependency_id).where(among(d, deps.c.task_id, ids))
    for task_id, dependency_id in conn.execute(edges):
        wanted.setdefault(task_id, set()).add(dependency_id)
    lock = (
        select(_DEPENDENCY.c.id)
        .join(deps, deps.c.dependency_id == _DEPENDENCY.c.id)
        .where(among(d, deps.c.task_id, ids))
        .with_for_update(read=True, skip_locked=True, of=_DEPENDENCY)
    )
    held.update(conn.execute(lock).scalars())
    held.update(ids)
    return [i for i in ids if wanted.get(i, set()) <= held]


def _finished(dialect: str) -> Any:
    """Return `status IN (terminal statuses)`, so marked on SQLite that it walks by time.

    Told nothing, SQLite's planner takes the status index and sorts every finished task
    by `finished_at` for each chunk; marked as filtering little, the status term leaves it
    the `ix_tasks_finished_at` range, already in order.
    """
    statuses = ", ".join(f"'{status}'" for status in TERMINAL)
    return text(weak(f"tasks.status IN ({statuses})", dialect))


def _has_unfinished() -> Any:
    """Return `EXISTS` an unfinished task that depends on the outer task row."""
    return exists(
        select(deps.c.task_id)
        .join(_DEPENDENT, _DEPENDENT.c.id == deps.c.task_id)
        .where(deps.c.dependency_id == tasks.c.id, _DEPENDENT.c.status.in_(UNFINISHED))
    )


def among(dialect: str, column: Any, ids: Sequence[str]) -> Any:
    """Return `column IN ids` with the ids as one bound parameter, however many.

    An IN list binds, and SQLAlchemy renders, one parameter per id: for a chunk of a
    thousand tasks that cost as much as the deletes themselves, inside the transaction.
    """
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(String())))
    values = func.json_each(bindparam(None, json.dumps(list(ids)))).table_valued("value")
    return column.in_(select(values.c.value))
