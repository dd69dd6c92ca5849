"""Walks down dependency edges to where a task's trouble starts.

Two questions, two walks. A retry refused because a dependency did not complete names one
task to retry instead: `retry_root` goes down one path, through every all_success task
that has a dependency that did not complete (retrying such a task would not work), to
the first that has none. The blockers answer names every root cause: `unfinished_roots`
follows unfinished dependencies to the tasks that wait for none, and `failed_roots`
follows the dependencies that stopped a task, only through tasks that did not run
because of a dependency.

The two part at an all_success task a user cancelled while it waited, and whose
dependency then failed: the retry walks through it, for it cannot be retried while that
dependency has not completed; the blockers answer stops at it, a cause in its own right,
for retrying the failed dependency would not bring it back.

Each walk is one recursive statement, however deep the graph: a chain of 20,000 costs
one round trip, not one per level. On PostgreSQL each step is a LATERAL subquery the
planner cannot flatten (OFFSET 0) inside `database.by_index`, so the walk reads the edges
it reaches by index (see `propagation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import Connection

from app.statuses import BLOCKING, UNFINISHED, Status
from app.storage import database, jsonsets, readiness
from app.storage.tables import unindexed_status, weak

# How many tasks a walk down to the task to retry visits at most.
MAX_RETRY_WALK = 100_000
# How many tasks a walk to the root causes visits at most.
MAX_CAUSE_WALK = 100_000


class Causes(NamedTuple):
    """The root causes a walk found, and whether it stopped at MAX_CAUSE_WALK before it
    had visited every task it would have followed (then more may lie beyond)."""

    roots: list[str]
    truncated: bool


# Each walk reads the tasks it reaches by id, and their status only as a filter: on
# PostgreSQL, statistics taken before the statuses changed (every task QUEUED, say, then
# a cascade) would make a status index look like the cheapest way in, and a walk read
# every task of that status at each step: six minutes for a 20,000-deep chain.


def _among(d: str, table: str, statuses: tuple[str, ...]) -> str:
    """`<table>`'s status is one of `statuses`, as a filter."""
    listed = ", ".join(f"'{status}'" for status in statuses)
    return weak(f"{unindexed_status(table, d)} IN ({listed})", d)


def _of(table: str, condition: str, task_id: str) -> str:
    """`condition` on the task `task_id`, read by id (NULL when there is none)."""
    return f"(SELECT {condition} FROM tasks {table} WHERE {table}.id = {task_id})"


def retry_root(conn: Connection, stopped: list[str]) -> str:
    """Return the task to retry for one that the dependencies `stopped` did not let run.

    From the lowest id among them, the walk goes on to the lowest dependency that did not
    complete, as long as the task it is at is all_success and has one.
    """
    sql = _retry_sql(conn.dialect.name)
    with database.by_index(conn):
        found = conn.exec_driver_sql(sql, {"start": min(stopped), "cap": MAX_RETRY_WALK})
        return str(found.scalar_one())


def _retry_sql(d: str) -> str:
    """The walk of `retry_root`: one path, from `start`, `cap` steps at most."""
    p = jsonsets.param
    blocking = _of("b", _among(d, "b", BLOCKING), "e.dependency_id")
    lowest = (
        "(SELECT min(e.dependency_id) FROM task_dependencies e"
        f" WHERE e.task_id = w.id AND {blocking})"
    )
    on = _of("t", "t.trigger_rule = 'all_success'", "w.id")
    step = f"SELECT {lowest}, w.depth + 1 FROM path w WHERE {on} AND w.depth < {p(d, 'cap')}"
    start = p(d, "start") if d == "sqlite" else f"{p(d, 'start')}::text"
    return (
        f"WITH RECURSIVE path(id, depth) AS (SELECT {start}, 0 UNION ALL {step})"
        " SELECT id FROM path WHERE id IS NOT NULL ORDER BY depth DESC LIMIT 1"
    )


def dependencies_where(
    conn: Connection, ids: Iterable[str], keep: Any
) -> dict[str, list[tuple[str, str]]]:
    """Return, for each task, the dependencies (id, status) whose status `keep` accepts."""
    found = readiness.dependencies(conn, ids, hold=False)
    return {t: [(d, s) for d, s in pairs if keep(s)] for t, pairs in found.items()}


def unfinished_roots(conn: Connection, start: list[str]) -> Causes:
    """Follow unfinished dependencies down to the tasks that wait for none."""
    return _walk(conn, start, unfinished_walk)


def failed_roots(conn: Connection, start: list[str]) -> Causes:
    """Follow the dependencies that stopped a task down to the tasks whose retry works.

    The walk goes on only through tasks that did not run because of a dependency; one
    that failed or was cancelled on its own is a root, whatever its dependencies did (an
    all_done task that ran after a failure and failed too), and so is a stopped task whose
    dependencies no longer stop it. A retry of the stopped task names one of these tasks,
    unless its walk passes a task a user cancelled (see above).
    """
    return _walk(conn, start, failed_walk)


def unfinished_walk(d: str) -> tuple[str, str | None]:
    """The unfinished walk: down to unfinished dependencies `b`, from every task."""
    return _among(d, "b", UNFINISHED), None


def failed_walk(d: str) -> tuple[str, str | None]:
    """The failed walk: down to dependencies `b` that ended without completing, from the
    tasks `t` that did not run because of a dependency."""
    stopped = f"({unindexed_status('t', d)} = '{Status.UPSTREAM_FAILED.value}'"
    stopped += " OR COALESCE(t.error_code, '') = 'upstream_cancelled')"  # never NULL
    return _among(d, "b", BLOCKING), stopped


# A walk, for a dialect: the condition on a dependency `b` it goes down to, and the one
# on a task `t` it goes on from (None: every task).
Walk = Callable[[str], tuple[str, str | None]]


def _walk(conn: Connection, start: list[str], walk: Walk) -> Causes:
    """Walk from `start` as `walk` says; return the tasks where the walk stops.

    One statement: the tasks the walk reaches (at most MAX_CAUSE_WALK, and one more to
    tell whether it stopped short), each with whether it is a root.
    """
    if not start:
        return Causes([], False)
    sql = walk_sql(conn.dialect.name, walk, MAX_CAUSE_WALK + 1)
    with database.by_index(conn):
        rows = conn.exec_driver_sql(sql, {"start": jsonsets.of_ids(start)}).all()
    truncated = len(rows) > MAX_CAUSE_WALK
    roots = sorted({task_id for task_id, root in rows[:MAX_CAUSE_WALK] if root})
    return Causes(roots, truncated)


def walk_sql(d: str, walk: Walk, most: int) -> str:
    """The statement of a walk from the ids of the JSON array `start`: at most `most`
    tasks it reaches (breadth first), each with whether the walk stops there."""
    follow, through = walk(d)
    edges = (
        "SELECT e.dependency_id FROM task_dependencies e"
        f" WHERE e.task_id = w.id AND {_of('b', follow, 'e.dependency_id')}"
    )
    goes_on = "TRUE" if through is None else _of("t", through, "w.id")
    if d == "sqlite":
        # SQLite stops the recursion itself at the LIMIT.
        onward = (
            "SELECT e.dependency_id FROM walk w JOIN task_dependencies e ON e.task_id = w.id"
            f" WHERE {goes_on} AND {_of('b', follow, 'e.dependency_id')} LIMIT {most}"
        )
    else:
        # PostgreSQL computes a recursive query's rows as they are read: the outer LIMIT
        # ends the walk. Each step is a LATERAL subquery it cannot flatten (OFFSET 0).
        onward = (
            f"SELECT e.dependency_id::text FROM walk w CROSS JOIN LATERAL ({edges} OFFSET 0)"
            f" AS e WHERE {goes_on}"
        )
    # A task that is gone meanwhile reads NULL: neither a root nor gone on from.
    stops = _of("t", f"NOT ({through or 'TRUE'} AND EXISTS ({edges}))", "w.id")
    return (
        f"WITH RECURSIVE walk(id) AS (SELECT id FROM ({jsonsets.ids(d, 'start')}) AS s"
        f" UNION {onward})"
        f" SELECT w.id, {stops} FROM walk w LIMIT {most}"
    )
