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
from app.storage import database, groups
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
