"""Tasks as submissions store them and reads load them: rows and their dependency edges."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import chain, islice
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Text,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from app.storage import database, jsonsets
from app.storage.database import sqlite_time
from app.storage.tables import CHUNK, chunks, deps, still_queued, tasks

# The other edges of a task that gains dependencies (tasks.adopt).
other = deps.alias("other")

# Every column but the two large JSON ones, for lists.
LIST_COLUMNS = [c for c in tasks.c if c.name not in ("payload", "result")]
# Ids per existence lookup: a few large IN lists beat hundreds of small ones, and stay
# far below SQLite's 32,766 bound parameters per statement.
LOOKUP_CHUNK = 5000

T = TypeVar("T")


def inserting(
    engine: Engine,
    work: Callable[[Connection], T],
    first: Callable[[Connection], T] | None = None,
) -> T:
    """Run a transaction that inserts tasks, once more if another inserted an id first.

    Run again, the transaction finds the other's task and answers as for a replay. With
    `first`, that runs first instead of `work`: a cheaper transaction that only inserts,
    leaving a stored id to the unique key (and so to `work`, which looks for it).
    """
    try:
        return database.transaction(engine, first or work)
    except IntegrityError:
        return database.transaction(engine, work)


def insert_rows(conn: Connection, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert task rows (each with its `dependencies` list) and their edges; return the
    rows. On PostgreSQL each row is taken from `rows` as the COPY sends it."""
    inserted: list[dict[str, Any]] = []
    edges: list[tuple[str, str, int]] = []

    def task_rows() -> Iterator[dict[str, Any]]:
        # Each row as it is, its `dependencies` with it: the rows' values are read by
        # column name (`_tuples`), so a key that names no column is passed over.
        for row in rows:
            inserted.append(row)
            task_id = row["id"]
            edges.extend((task_id, d, k) for k, d in enumerate(row["dependencies"]))
            yield row

    if conn.dialect.name == "sqlite":
        _insert_sqlite(conn, list(task_rows()), edges)
    else:
        # `edges` fills as the rows are sent, before the COPY of the edges reads it.
        _copy_postgresql(conn, task_rows(), edges)
    return inserted


# The rows go to the driver as tuples of every column but seq, bound as SQLAlchemy's own
# types bind them: its per-row parameter processing cost as much as the insert itself,
# inside the write lock every scheduler pass waits for.
_COLUMNS = [c.name for c in tasks.c if c.name != "seq"]
# Every column, with the value a row that leaves it out gets (its default, or NULL).
_UNSET = {
    c.name: c.default.arg if c.default is not None and c.default.is_scalar else None
    for c in tasks.c
    if c.name != "seq"
}
_values_of = itemgetter(*_COLUMNS)


def _time(value: datetime | None) -> str | None:
    return None if value is None else sqlite_time(value)


def _json(value: Any) -> str:
    return "{}" if value == {} else json.dumps(value)  # {}: the usual payload


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


# What each backend's driver needs converted, as SQLAlchemy's types convert it: JSON as
# its text on both (a column given None stores the JSON text null, one left out NULL);
# on SQLite also times as SQLAlchemy's DateTime writes them, and flags as integers.
_JSON_BIND: dict[str, Callable[[Any], Any]] = {
    c.name: _json for c in tasks.c if isinstance(c.type, JSON)
}
_SQLITE_BIND: dict[str, Callable[[Any], Any]] = {
    **_JSON_BIND,
    **{c.name: _time for c in tasks.c if isinstance(c.type, DateTime)},
    **{c.name: _flag for c in tasks.c if isinstance(c.type, Boolean)},
}


def _tuples(
    task_rows: Iterable[dict[str, Any]], binds: dict[str, Callable[[Any], Any]]
) -> Iterator[tuple[Any, ...]]:
    """Yield each row's values in `_COLUMNS` order, those it sets converted by `binds`."""
    keys: Any = None
    plan: list[tuple[int, Callable[[Any], Any]]] = []
    for row in task_rows:
        if row.keys() != keys:  # the rows of one submission share their keys
            keys = row.keys()
            plan = [(k, binds[c]) for k, c in enumerate(_COLUMNS) if c in keys and c in binds]
        values = list(_values_of({**_UNSET, **row}))
        for k, bind in plan:
            values[k] = bind(values[k])
        yield tuple(values)


_INSERT_TASKS = (
    f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_INSERT_EDGES = "INSERT INTO task_dependencies (task_id, dependency_id, position) VALUES (?, ?, ?)"
_INSERT_ADOPTED = (
    "INSERT INTO task_dependencies (task_id, dependency_id, position, adopted) VALUES (?, ?, ?, 1)"
)


def sqlite_inserts(rows: Iterable[dict[str, Any]]) -> list[tuple[str, tuple[Any, ...]]]:
    """Return the statements, with their parameters, with which `insert_rows` inserts
    task `rows` (their dependencies left out) on SQLite: what a bench runs bare."""
    task_rows = [{k: v for k, v in row.items() if k != "dependencies"} for row in rows]
    return list(_statements(_INSERT_TASKS, list(_tuples(task_rows, _SQLITE_BIND))))


# Rows per INSERT on SQLite. A statement run once per row (executemany) paid, with the
# count trigger on tasks, for a statement journal per row: a 1,000-task batch spent 16-19
# ms in the write lock, against 9.6-11 ms as two statements of 500 rows (13,500
# parameters, under SQLite's 32,766).
SQLITE_ROWS = 500


@lru_cache(maxsize=8)
def _values_sql(insert: str, rows: int) -> str:
    """Return `insert` (an INSERT ... VALUES of one row) taking `rows` rows."""
    head, _, row = insert.partition(" VALUES ")
    return f"{head} VALUES {', '.join([row] * rows)}"


def _statements(
    insert: str, rows: Sequence[tuple[Any, ...]]
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Yield the INSERTs of `rows`, SQLITE_ROWS at a time, with their parameters."""
    for part in chunks(rows, SQLITE_ROWS):
        yield _values_sql(insert, len(part)), tuple(chain.from_iterable(part))


def _insert_many(conn: Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    for sql, params in _statements(insert, rows):
        database.driver_execute(conn, sql, params)


def _insert_sqlite(
    conn: Connection, task_rows: list[dict[str, Any]], edges: list[tuple[str, str, int]]
) -> None:
    _insert_many(conn, _INSERT_TASKS, list(_tuples(task_rows, _SQLITE_BIND)))
    _insert_many(conn, _INSERT_EDGES, edges)


# Rows per COPY statement: about 70 ms each on an idle two-core machine, the making of
# its rows included (several hundred with other threads busy).
COPY_CHUNK = 5000
_COPY_TASKS = database.copy_statement(tasks, _COLUMNS)
_COPY_EDGES = database.copy_statement(deps, ["task_id", "dependency_id", "position"])
_COPY_ADOPTED = database.copy_statement(deps, ["task_id", "dependency_id", "position", "adopted"])


def _copy_postgresql(
    conn: Connection,
    task_rows: Iterable[dict[str, Any]],
    edges: Sequence[tuple[str, str, int] | tuple[str, str, int, bool]],
    edges_copy: tuple[str, list[str]] = _COPY_EDGES,
) -> None:
    """Insert with COPY, PostgreSQL's fastest path: an INSERT per row, even pipelined,
    ran at a third of its rate. COPY fires the same triggers and checks the same keys (a
    duplicate id raises an IntegrityError, which `inserting` answers as a replay).
    """
    # A COPY is one statement: chunks bound how long each runs, for a statement_timeout.
    rows = iter(task_rows)
    for first in rows:  # each COPY takes its rows one by one, as they are made
        part = chain([first], islice(rows, COPY_CHUNK - 1))
        database.copy_rows(conn, _COPY_TASKS[0], _tuples(part, _JSON_BIND), _COPY_TASKS[1])
    for edge_part in chunks(edges, COPY_CHUNK):
        database.copy_rows(conn, edges_copy[0], edge_part, edges_copy[1])


def row(conn: Connection, task_id: str, *, with_payload: bool) -> Any:
    """Return one task's row, or None when the id is unknown."""
    columns = list(tasks.c) if with_payload else LIST_COLUMNS
    return conn.execute(select(*columns).where(tasks.c.id == task_id)).first()


def rows_by_id(conn: Connection, ids: Sequence[str]) -> dict[str, Any]:
    """Return the stored rows among `ids`, whole, by id."""
    found: dict[str, Any] = {}
    for part in chunks(ids, LOOKUP_CHUNK):
        found.update((r.id, r) for r in conn.execute(select(tasks).where(tasks.c.id.in_(part))))
    return found


def existing(conn: Connection, ids: Sequence[str]) -> set[str]:
    """Return those of `ids` that a stored task has: one statement, the ids one JSON
    parameter (as bound lists, a batch of 10,000 cost a third of its submission)."""
    if not ids:
        return set()
    d = conn.dialect.name
    sql = f"SELECT id FROM tasks WHERE id IN ({jsonsets.ids(d, 'ids')})"
    return set(conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(ids)}).scalars())


def dependencies_of(
    conn: Connection, ids: Sequence[str], *, submitted: bool = False
) -> dict[str, list[str]]:
    """Return the dependencies of each task, in the order they were given; with
    `submitted`, only those its submission named (not those it adopted since).

    The ids travel as one JSON parameter: one statement text whatever their number, so
    the driver and the database reuse its parsing (a page of 100 read them as 100 bound
    parameters, rendered anew each time).
    """
    if not ids:
        return {}
    d = conn.dialect.name
    only = " AND NOT e.adopted" if submitted else ""
    sql = (
        f"SELECT e.task_id, e.dependency_id FROM ({jsonsets.ids(d, 'ids')}) AS s"
        f" JOIN task_dependencies e ON e.task_id = s.id{only} ORDER BY e.task_id, e.position"
    )
    result: dict[str, list[str]] = {}
    for task_id, dependency_id in conn.exec_driver_sql(sql, {"ids": jsonsets.of_ids(ids)}):
        result.setdefault(task_id, []).append(dependency_id)
    return result


def dependency_results_size(conn: Connection, task_id: str) -> int:
    """Return the length of the results of a task's dependencies, as JSON text."""
    size = func.coalesce(func.sum(func.length(cast(tasks.c.result, Text))), 0)
    query = (
        select(size)
        .select_from(deps.join(tasks, tasks.c.id == deps.c.dependency_id))
        .where(deps.c.task_id == task_id)
    )
    return int(conn.execute(query).scalar_one())


def dependency_results(conn: Connection, task_id: str) -> dict[str, Any]:
    """Return `{dependency id: result}` of a task's stored dependencies, in their order."""
    query = (
        select(tasks.c.id, tasks.c.result)
        .select_from(deps.join(tasks, tasks.c.id == deps.c.dependency_id))
        .where(deps.c.task_id == task_id)
        .order_by(deps.c.position)
    )
    return {task_id: result for task_id, result in conn.execute(query)}


def lock_for_adding(conn: Connection, task_id: str) -> str | None:
    """Lock a task's row FOR UPDATE (PostgreSQL; SQLite's write lock holds it already);
    return its batch id."""
    query = select(tasks.c.batch_id).where(tasks.c.id == task_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    batch_id: str | None = conn.execute(query).scalar_one()
    return batch_id


def dependents_of(conn: Connection, parent: str) -> list[tuple[str, int, int]]:
    """Return each task that depends on `parent`, with the last position of its edges and
    how many dependencies it has."""
    return [
        (task_id, last, count)
        for task_id, last, count in conn.execute(
            select(deps.c.task_id, func.max(other.c.position), func.count())
            .select_from(deps.join(other, other.c.task_id == deps.c.task_id))
            .where(deps.c.dependency_id == parent)
            .group_by(deps.c.task_id)
            .order_by(deps.c.task_id)
        )
    ]


def adopt(conn: Connection, dependents: Sequence[tuple[str, int]], added: Sequence[str]) -> int:
    """Make each of `dependents` (with the last position of its edges) depend on the new
    tasks `added` too, after its other dependencies, by edges marked adopted; a QUEUED one
    waits for them (they are unfinished). Return how many tasks now wait for them."""
    if not dependents or not added:
        return 0
    edges = [
        (dependent, child, last + 1 + k)
        for dependent, last in dependents
        for k, child in enumerate(added)
    ]
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_INSERT_ADOPTED, edges)
    else:
        _copy_postgresql(conn, [], [(*edge, True) for edge in edges], _COPY_ADOPTED)
    changed = 0
    for ids in chunks([dependent for dependent, _ in dependents], CHUNK):
        changed += conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(ids), still_queued(conn.dialect.name))
            .values(pending_deps=tasks.c.pending_deps + len(added))
        ).rowcount
    return changed
