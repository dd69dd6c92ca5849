"""Group commit of concurrent single submissions on SQLite (app/storage/groups.py).

Each test holds the write lock while its callers queue, so that they form one group
whatever the threads' timing, then lets the group run.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import OperationalError

from app import events, faults
from app.errors import ApiError, DuplicateId
from app.services import submissions
from app.storage import database, dbfaults, groups
from app.storage.dbfaults import CommitUnknown
from app.storage.store import Store
from tests.support.store import row

DEADLINE_S = 10.0


@pytest.fixture
def store(app: Flask) -> Store:
    return app.extensions["store"]


def _in_one_group(
    store: Store, calls: list[Callable[[], Any]], group: groups.GroupCommit | None = None
) -> list[Any]:
    """Run `calls` on threads that queue in `group` (the submissions') while the write
    lock is held; return each one's result or raised exception."""
    group = group or groups.of(store.engine, (ApiError,))
    out: list[Any] = [None] * len(calls)

    def call(k: int) -> None:
        try:
            out[k] = calls[k]()
        except Exception as exc:
            out[k] = exc

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(calls))]
    with database.write(store.engine):
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE_S
        while len(group._waiting) < len(calls):
            assert time.monotonic() < deadline, "the callers never all queued"
            time.sleep(0.001)
    for thread in threads:
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
    return out


@pytest.fixture
def commits(store: Store) -> Iterator[list[int]]:
    seen: list[int] = []
    listener = lambda _conn: seen.append(1)  # noqa: E731
    event.listen(store.engine, "commit", listener)
    yield seen
    event.remove(store.engine, "commit", listener)


def _submit(store: Store, task_id: str, **fields: Any) -> Callable[[], Any]:
    body = {"id": task_id, "type": "simulate", "duration_ms": 1, **fields}
    return lambda: submissions.submit(store.engine, body)


def test_concurrent_submissions_share_one_commit(store: Store, commits: list[int]) -> None:
    answers = _in_one_group(store, [_submit(store, f"t{k}") for k in range(8)])
    assert len(commits) == 2  # the lock holder's, then the group's
    assert all(a.created for a in answers), answers
    assert sorted(a.task["id"] for a in answers) == [f"t{k}" for k in range(8)]
    assert all(row(store, f"t{k}").status == "QUEUED" for k in range(8))


def test_a_refused_submission_leaves_the_rest_of_its_group(
    store: Store, commits: list[int]
) -> None:
    submissions.submit(store.engine, {"id": "old", "type": "simulate", "duration_ms": 1})
    commits.clear()
    calls = [
        _submit(store, "a"),
        _submit(store, "old", duration_ms=2),  # the id is taken, with another body
        _submit(store, "old"),  # an identical resubmission: a replay
        _submit(store, "b", dependencies=["missing"]),
        _submit(store, "c", dependencies=["old"]),
    ]
    a, taken, replay, unknown, c = _in_one_group(store, calls)
    assert len(commits) == 2
    assert a.created and c.created
    assert isinstance(taken, DuplicateId)
    assert not replay.created and replay.task["id"] == "old"
    assert unknown.__class__.__name__ == "UnknownDependency"
    assert row(store, "old").duration_ms == 1
    with database.read(store.engine) as conn:
        assert conn.execute(text("SELECT id FROM tasks WHERE id = 'b'")).first() is None
    assert row(store, "c").pending_deps == 1


def _insert(group: groups.GroupCommit, value: int, fail: bool = False) -> Callable[[], Any]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (x) VALUES (:x)"), {"x": value})
        if fail:
            raise RuntimeError(f"a bug in the work of {value}")
        return value

    return lambda: group.run(work, work)


@pytest.fixture
def group(store: Store) -> groups.GroupCommit:
    """A group commit of its own, refusals being ValueErrors, on a table of its own."""
    with database.write(store.engine) as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    return groups.GroupCommit(store.engine, (ValueError,))


def _stored(store: Store) -> list[int]:
    with database.read(store.engine) as conn:
        return [x for (x,) in conn.execute(text("SELECT x FROM t ORDER BY x"))]


def test_an_unexpected_error_fails_its_caller_and_the_others_run_alone(
    store: Store, group: groups.GroupCommit, commits: list[int]
) -> None:
    calls = [_insert(group, 1), _insert(group, 2, fail=True), _insert(group, 3)]
    one, bug, three = _in_one_group(store, calls, group)
    assert len(commits) == 3  # the lock holder's, then one alone for each of the others
    assert (one, three) == (1, 3)
    assert isinstance(bug, RuntimeError)
    assert _stored(store) == [1, 3]


def test_a_refusal_rolls_back_only_its_own_savepoint(
    store: Store, group: groups.GroupCommit, commits: list[int]
) -> None:
    def refused(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (x) VALUES (2)"))
        raise ValueError("refused after writing")

    calls = [_insert(group, 1), lambda: group.run(refused, refused), _insert(group, 3)]
    one, no, three = _in_one_group(store, calls, group)
    assert len(commits) == 2
    assert (one, three) == (1, 3) and isinstance(no, ValueError)
    assert _stored(store) == [1, 3]


def test_a_transaction_that_cannot_begin_fails_its_leader_and_leaves_no_one_behind(
    store: Store, group: groups.GroupCommit
) -> None:
    # Found by the simulation: an outage at BEGIN answered the leading caller with
    # nothing, and left its work queued for the next group to run unasked.
    def unavailable(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.startswith("BEGIN"):
            raise OperationalError("statement", {}, Exception("the database is unavailable"))

    event.listen(store.engine, "before_cursor_execute", unavailable)
    try:
        with pytest.raises(OperationalError):
            _insert(group, 1)()
    finally:
        event.remove(store.engine, "before_cursor_execute", unavailable)
    assert not group._waiting
    assert _insert(group, 2)() == 2
    assert _stored(store) == [2]


def test_the_unique_key_sends_a_caller_to_its_second_work(
    store: Store, group: groups.GroupCommit
) -> None:
    def first(conn: Connection) -> str:
        conn.execute(text("INSERT INTO t (x) VALUES (1)"))
        return "inserted"

    assert group.run(lambda _conn: "looked", first) == "inserted"
    assert group.run(lambda _conn: "looked", first) == "looked"
    assert _stored(store) == [1]


def test_a_failed_commit_fails_every_caller_of_the_group(
    store: Store, group: groups.GroupCommit
) -> None:
    commits: list[int] = []

    def lost(**_: Any) -> None:
        commits.append(1)
        if len(commits) > 1:  # the lock holder's own commit goes through
            raise CommitUnknown(RuntimeError("the connection broke during COMMIT"))

    with faults.injected("database.commit", lost):
        out = _in_one_group(store, [_insert(group, k) for k in range(3)], group)
    assert len(commits) == 2
    assert all(isinstance(o, CommitUnknown) for o in out), out
    assert _stored(store) == []


@pytest.mark.usefixtures("task_events_on")
def test_changes_of_a_rolled_back_savepoint_are_not_logged(app: Flask, store: Store) -> None:
    log = events.of(store.engine)
    log.stream = io.StringIO()
    with database.write(store.engine):
        events.stage([("kept", "simulate", 0, "QUEUED", "submitted")])
        with pytest.raises(RuntimeError), events.held():
            events.stage([("dropped", "simulate", 0, "QUEUED", "submitted")])
            raise RuntimeError("its savepoint rolls back")
        with events.held():
            events.stage([("also kept", "simulate", 0, "QUEUED", "submitted")])
    log.flush()
    lines = log.stream.getvalue()
    assert "task kept QUEUED" in lines and "task also kept QUEUED" in lines
    assert "dropped" not in lines


def _full_at_commit() -> Callable[..., None]:
    calls: list[int] = []

    def full(**_: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the lock holder's commit, then the group's
            raise OperationalError("COMMIT", {}, Exception("database or disk is full"))

    return full


def _exists(store: Store, task_id: str) -> bool:
    with database.read(store.engine) as conn:
        found = conn.execute(text("SELECT 1 FROM tasks WHERE id = :i"), {"i": task_id})
        return found.first() is not None


def test_a_refusal_stands_only_once_its_group_has_committed(store: Store) -> None:
    # Found by an outside review: B was refused as a duplicate of A's insert, which the
    # failed commit then undid; B's 409 named an id that was never stored.
    with faults.injected("database.commit", _full_at_commit()):
        first, second = _in_one_group(
            store, [_submit(store, "x"), _submit(store, "x", duration_ms=2)]
        )
    assert isinstance(first, OperationalError)
    assert second.created and second.task["duration_ms"] == 2  # asked again, alone
    assert row(store, "x").duration_ms == 2


def test_a_refusal_in_a_group_that_rolled_back_is_asked_again(store: Store) -> None:
    # B is refused inside the group as a duplicate of A's insert; c's error rolls the
    # group back, and x's inserts fail from then on: x is never stored, so nothing may
    # be refused as its duplicate.
    inserted: list[str] = []

    def unavailable(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if sql.startswith("INSERT INTO tasks"):
            inserted.append(params[0][0])
            if params[0][0] == "c" or inserted.count("x") > 2:
                raise OperationalError(sql, {}, Exception("the database is unavailable"))

    event.listen(store.engine, "before_cursor_execute", unavailable)
    try:
        calls = [_submit(store, "x"), _submit(store, "x", duration_ms=2), _submit(store, "c")]
        first, second, third = _in_one_group(store, calls)
    finally:
        event.remove(store.engine, "before_cursor_execute", unavailable)
    assert all(isinstance(a, OperationalError) for a in (first, second, third))
    assert not _exists(store, "x")


def test_an_error_that_ended_the_whole_transaction_keeps_its_kind(
    store: Store, group: groups.GroupCommit
) -> None:
    # Found by an outside review: on a full disk SQLite may roll the whole transaction
    # back itself; the savepoint's ROLLBACK TO then failed, and its "no such savepoint"
    # replaced storage_full with a bug.
    with database.write(store.engine) as conn:
        conn.exec_driver_sql("CREATE TABLE u (b BLOB)")

    def fill(conn: Connection) -> int:
        (pages,) = conn.exec_driver_sql("PRAGMA page_count").one()
        conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        conn.exec_driver_sql("INSERT INTO u (b) VALUES (randomblob(100000))")
        return 1

    with pytest.raises(OperationalError) as raised:
        group.run(fill, fill)
    assert dbfaults.classify(raised.value) is not None, raised.value
    assert not group._waiting


def test_each_caller_raises_an_exception_of_its_own(
    store: Store, group: groups.GroupCommit
) -> None:
    with faults.injected("database.commit", _full_at_commit()):
        out = _in_one_group(store, [_insert(group, k) for k in range(3)], group)
    assert all(isinstance(o, OperationalError) for o in out), out
    assert len({id(o) for o in out}) == 3
    assert _stored(store) == []
