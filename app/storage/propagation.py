"""Propagation along dependency edges when tasks end, all in the caller's transaction.

A failure or a cancel reaches every `all_success` task that waits for it, however deep,
in one recursive read down the edges, and every task it reaches is written by one more
statement (their errors passed as one JSON object). A 20,000-deep chain costs a few
statements, not two per level.

On PostgreSQL the walk reads a snapshot taken before the rows it reaches are locked, so
a submission that named one of them as a dependency and committed in between is not in
it. Such a dependent is looked for once every row is written and locked (a later
submission naming one waits for the lock and sees it ended), and cut off in turn.
SQLite's single writer leaves no such gap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import partial

from sqlalchemy import Connection

from app import events
from app.statuses import FAILED_LIKE, Status
from app.storage import database, jsonsets
from app.storage.scheduler_sql import bound_time, count_down
from app.storage.tables import chunks, status_filter, weak

# How the cut-off tasks end, by what reached them: a failure wins over a cancel.
FAILURE, CANCEL = "f", "c"
_ENDS = {
    FAILURE: (Status.UPSTREAM_FAILED, "upstream_failed", "failed"),
    CANCEL: (Status.CANCELLED, "upstream_cancelled", "was cancelled"),
}


def settle(conn: Connection, ended: dict[str, Status], now: datetime) -> int:
    """Propagate tasks that just became terminal to their dependents, transitively.

    Each dependent loses one unfinished dependency per ended task it waits for. An
    `all_success` dependent still QUEUED behind a failure becomes UPSTREAM_FAILED, behind
    a cancel CANCELLED (a failure anywhere above it wins), and the cascade goes on from
    it. Returns how many dependents were left waiting for nothing (ready, unless cut off).
    """
    seeds = {i: kind for i, s in ended.items() if (kind := _kind(s))}
    stopped = cut_off(conn, seeds, now) if seeds else []
    return count_down_all(conn, list(ended)) + count_down_cut(conn, stopped)


def cut_off(conn: Connection, seeds: dict[str, str], now: datetime) -> list[str]:
    """End every QUEUED `all_success` task below `seeds` (id to FAILURE or CANCEL) as
    never to run, transitively; return them. The seeds themselves are not written."""
    with database.by_index(conn):
        return _cut_off(conn, seeds, now)


def _cut_off(conn: Connection, seeds: dict[str, str], now: datetime) -> list[str]:
    stopped: list[str] = []
    reached = dict(seeds)
    origins = {seed: seed for seed in seeds}
    while seeds:
        ends = _ends(_reach(conn, seeds))
        _trace(ends, origins)
        for kind in (FAILURE, CANCEL):
            culprits = {i: c for i, (k, c) in ends.items() if k == kind}
            stopped.extend(_write(conn, kind, culprits, origins, now))
        reached.update((i, kind) for i, (kind, _) in ends.items())
        seeds = _escaped(conn, reached) if conn.dialect.name == "postgresql" else {}
    return stopped


def count_down_all(conn: Connection, ended: Sequence[str]) -> int:
    """Take `ended` off their QUEUED dependents' counts; return how many reach 0."""
    return sum(count_down(conn, part) for part in chunks(list(ended)))


def count_down_cut(conn: Connection, stopped: Sequence[str]) -> int:
    """Take tasks just cut off off their QUEUED all_done dependents' counts (their
    all_success ones were cut off with them); return how many reach 0.

    Two statements whatever the number: the edges, read once every cut-off row is
    locked (so a dependent submitted meanwhile is seen), then the counts.
    """
    if not stopped:
        return 0
    with database.by_index(conn):
        return _count_down_cut(conn, stopped)


def _count_down_cut(conn: Connection, stopped: Sequence[str]) -> int:
    d = conn.dialect.name
    all_done = f"{_queued(d, 't')} AND t.trigger_rule = 'all_done'"
    sql = f"SELECT task_id FROM ({jsonsets.dependents(d, 'ids', all_done)}) AS b"
    found = conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(stopped)}).all()
    counts = Counter(task_id for (task_id,) in found)
    if not counts:
        return 0
    sql = (
        f"UPDATE tasks SET pending_deps = tasks.pending_deps - {jsonsets.integer(d, 'j.value')}"
        f" FROM {jsonsets.pairs(d, 'counts')} WHERE tasks.id = j.key"
        f" AND {_queued(d, 'tasks')} RETURNING tasks.pending_deps"
    )
    left = conn.exec_driver_sql(sql, {"counts": jsonsets.of_pairs(counts)}).all()
    return sum(1 for (pending,) in left if pending == 0)


def _queued(d: str, table: str) -> str:
    """`status = 'QUEUED'` on rows found by id: on PostgreSQL no status index may serve it
    (with statistics taken before a burst of tasks, the planner would read every QUEUED
    task once for each row it writes; see `status_filter`)."""
    return status_filter(table, "QUEUED", d)


# What each status that cuts off its dependents reaches them as (by far most are none).
_KINDS = {
    **{status: FAILURE for status in Status if status.value in FAILED_LIKE},
    Status.CANCELLED: CANCEL,
}


def _kind(status: Status) -> str:
    return _KINDS.get(status, "")


def _waiting(d: str) -> str:
    """The condition on a dependent `t` that a failure or cancel above it cuts off."""
    queued = weak("t.status = 'QUEUED'", d)
    return f"{queued} AND t.trigger_rule = 'all_success'"


def _reach_sql(d: str) -> str:
    """Every (dependent, dependency, kind) edge a cascade from the seeds crosses.

    On PostgreSQL each step is a LATERAL subquery the planner cannot flatten (OFFSET 0),
    and each dependent's status a scalar subquery by id: so the walk goes from each
    reached task to its dependents, and never from every waiting task back to the
    reached ones (see `database.by_index` and the edge statistics in models.py).
    """
    if d == "sqlite":
        step = (
            "FROM reached r JOIN task_dependencies e ON e.dependency_id = r.id"
            f" JOIN tasks t ON t.id = e.task_id WHERE {_waiting(d)}"
        )
        return (
            "WITH RECURSIVE reached(id, kind) AS ("
            f"SELECT j.key, j.value FROM {jsonsets.pairs(d, 'seeds')}"
            f" UNION SELECT e.task_id, r.kind {step})"
            f" SELECT e.task_id, e.dependency_id, r.kind {step}"
        )
    below = (
        "FROM reached r CROSS JOIN LATERAL (SELECT e.task_id, e.dependency_id"
        " FROM task_dependencies e WHERE e.dependency_id = r.id"
        f" AND (SELECT {_waiting(d)} FROM tasks t WHERE t.id = e.task_id) OFFSET 0) AS e"
    )
    return (
        "WITH RECURSIVE reached(id, kind) AS ("
        f"SELECT j.key::text, j.value::text FROM {jsonsets.pairs(d, 'seeds')}"
        f" UNION SELECT e.task_id::text, r.kind {below})"
        f" SELECT e.task_id, e.dependency_id, r.kind {below}"
    )


def _reach(conn: Connection, seeds: dict[str, str]) -> list[tuple[str, str, str]]:
    """Return the edges below `seeds`, each with the kind of what reached it."""
    params = {"seeds": jsonsets.of_pairs(seeds)}
    return list(conn.exec_driver_sql(_reach_sql(conn.dialect.name), params).all())


def _ends(edges: Sequence[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    """Return each reached task's kind (a failure wins) and its culprit: its lowest
    dependency of that kind."""
    culprits: dict[str, dict[str, str]] = {}
    for task_id, dependency, kind in edges:
        found = culprits.setdefault(task_id, {})
        if kind not in found or dependency < found[kind]:
            found[kind] = dependency
    return {
        task_id: (FAILURE, by[FAILURE]) if FAILURE in by else (CANCEL, by[CANCEL])
        for task_id, by in culprits.items()
    }


def _trace(ends: dict[str, tuple[str, str]], origins: dict[str, str]) -> None:
    """Add to `origins` the seed each reached task's culprits lead back to: the task that
    failed or was cancelled itself."""
    for task_id in ends:
        path = []
        current = task_id
        while current not in origins:
            path.append(current)
            current = ends[current][1]
        for on_the_way in path:
            origins[on_the_way] = origins[current]


def _write(
    conn: Connection,
    kind: str,
    culprits: dict[str, str],
    origins: dict[str, str],
    now: datetime,
) -> list[str]:
    """End the tasks of one kind that are still QUEUED; return them."""
    if not culprits:
        return []
    d = conn.dialect.name
    p = partial(jsonsets.param, d)
    status, code, verb = _ENDS[kind]
    errors = {
        task_id: _error(culprit, origins[culprit], verb)
        for task_id, culprit in sorted(culprits.items())
    }
    params = {
        "status": status.value,
        "code": code,
        "now": bound_time(d, now),
        "errors": jsonsets.of_pairs(errors),
    }
    sql = (
        f"UPDATE tasks SET status = {p('status')}, error = j.value, error_code = {p('code')},"
        f" finished_at = {p('now')}, updated_at = {p('now')} FROM {jsonsets.pairs(d, 'errors')}"
        f" WHERE tasks.id = j.key AND {_queued(d, 'tasks')}"
        " RETURNING tasks.id, tasks.type, tasks.attempts, tasks.error"
    )
    found = conn.exec_driver_sql(sql, params).all()
    events.stage([(i, t, a, status.value, e) for i, t, a, e in found])
    return [i for i, _, _, _ in found]


def _error(culprit: str, origin: str, verb: str) -> str:
    """The error of a task cut off by `culprit`, which `origin` cut off in turn (or which
    is `origin`, the task that failed or was cancelled itself)."""
    if culprit == origin:
        return f"Dependency {culprit} {verb}, so this task will not run."
    return f"Dependency {culprit} will not run because {origin} {verb}, so this task will not run."


def _escaped(conn: Connection, reached: dict[str, str]) -> dict[str, str]:
    """Return the reached tasks that a dependent the recursive read missed still waits
    for, with their kinds, read once all of them are locked."""
    d = conn.dialect.name
    below = jsonsets.dependents(d, "ids", _waiting(d))
    sql = f"SELECT DISTINCT dependency_id FROM ({below}) AS b"
    found = conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(sorted(reached))}).all()
    return {i: reached[i] for (i,) in found}
