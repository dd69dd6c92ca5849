"""`GET /api/tasks/<id>?wait=S`: answered as soon as the task ends, by the events that
wake the scheduler, holding no database connection meanwhile, a bounded number at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from app import parts
from app.handlers import TaskContext
from tests.support.apps import AppFactory
from tests.support.client import HOUR_MS, assert_error, running_app, submit
from tests.support.waiting import wait_for


class Waiting:
    """A request waiting in a thread of its own, and its answer once it came."""

    def __init__(self, app: Flask, path: str) -> None:
        self.answer: Any = None
        self._thread = threading.Thread(target=self._get, args=(app, path), daemon=True)
        self._thread.start()

    def _get(self, app: Flask, path: str) -> None:
        self.answer = app.test_client().get(path)

    def result(self, timeout: float = 30.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the waiting request did not answer"
        return self.answer


def _waiting(app: Flask, count: int) -> Callable[[], bool]:
    return lambda: parts.waiters(app).waiting == count


def _gauge(client: Any) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    (line,) = [x for x in text.splitlines() if x.startswith("taskscheduler_waiting_requests ")]
    return float(line.split()[1])


def _gate() -> tuple[threading.Event, threading.Event, Callable[[TaskContext], str]]:
    started, release = threading.Event(), threading.Event()

    def gated(ctx: TaskContext) -> str:
        started.set()
        release.wait(30)
        return "done"

    return started, release, gated


def test_a_wait_answers_when_the_task_completes_without_reading_meanwhile(
    make_app: AppFactory,
) -> None:
    started, release, gated = _gate()
    # The safety net reads once an hour: only the completion's event can answer in time.
    app = running_app(make_app, {"gated": gated})
    client = app.test_client()
    submit(client, "g", type="gated")
    assert started.wait(30)
    reads: list[str] = []
    engine = parts.engine(app)

    def count(*args: Any) -> None:
        reads.append(args[2])

    waiting = Waiting(app, "/api/tasks/g?wait=60")
    wait_for(_waiting(app, 1), what="the request to wait")
    event.listen(engine, "before_cursor_execute", count)
    try:
        # While it waits, it holds no connection (the scheduler's own jobs take one for
        # a moment now and then), and reads nothing.
        idle = lambda: engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # noqa: E731
        wait_for(idle, what="no connection to be checked out")
        release.set()
        answer = waiting.result()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "COMPLETED" and body["result"] == "done"
    task_reads = [sql for sql in reads if "FROM tasks" in sql and "tasks.id =" in sql]
    # The pass that completed it, then the waiting request's one read of the task (and
    # its dependencies), not a read per interval.
    assert 1 <= len(task_reads) <= 3, task_reads


def test_a_wait_answers_at_its_deadline_with_the_task_as_it_is(make_app: AppFactory) -> None:
    app = make_app()  # no scheduler: the task stays QUEUED
    client = app.test_client()
    submit(client, "q")
    answer = client.get("/api/tasks/q?wait=0.2")
    assert answer.status_code == 200 and answer.get_json()["status"] == "QUEUED"
    assert client.get("/api/tasks/q?wait=0").get_json()["status"] == "QUEUED"


def test_a_finished_task_answers_at_once_and_a_cancel_wakes_a_waiter(
    make_app: AppFactory,
) -> None:
    app = make_app(POLLING_INTERVAL=HOUR_MS)
    client = app.test_client()
    submit(client, "c")
    waiting = Waiting(app, "/api/tasks/c?wait=60")
    wait_for(_waiting(app, 1), what="the request to wait")
    assert client.post("/api/tasks/c/cancel").status_code == 200
    assert waiting.result().get_json()["status"] == "CANCELLED"
    # Already terminal: no slot taken, no wait.
    assert client.get("/api/tasks/c?wait=60").get_json()["status"] == "CANCELLED"


def test_waiting_requests_are_bounded_per_worker(make_app: AppFactory) -> None:
    app = make_app(MAX_WAITING_REQUESTS="2", POLLING_INTERVAL=HOUR_MS)
    client = app.test_client()
    for task_id in ("a", "b", "c"):
        submit(client, task_id)
    first = Waiting(app, "/api/tasks/a?wait=60")
    second = Waiting(app, "/api/tasks/a?wait=60")
    wait_for(_waiting(app, 2), what="two requests to wait")

    assert _gauge(client) == 2  # what /metrics shows an operator
    refused = client.get("/api/tasks/b?wait=60")
    body = assert_error(refused, 503, "too_many_waiting")
    assert refused.headers["Retry-After"] == "1"
    assert body["details"] == {"max_waiting_requests": 2}
    # Without wait, a read is served as always.
    assert client.get("/api/tasks/b").status_code == 200

    client.post("/api/tasks/a/cancel")
    assert first.result().get_json()["status"] == "CANCELLED"
    assert second.result().get_json()["status"] == "CANCELLED"
    assert parts.waiters(app).waiting == 0
    assert _gauge(client) == 0
    assert client.get("/api/tasks/c?wait=0.05").get_json()["status"] == "QUEUED"


def test_a_stopping_worker_answers_its_waiting_requests_at_once(make_app: AppFactory) -> None:
    app = make_app(POLLING_INTERVAL=HOUR_MS)
    submit(app.test_client(), "s")
    waiting = Waiting(app, "/api/tasks/s?wait=60")
    wait_for(_waiting(app, 1), what="the request to wait")
    parts.waiters(app).close()
    assert waiting.result(timeout=10).get_json()["status"] == "QUEUED"


@pytest.mark.parametrize(
    ("wait", "problem"),
    [("abc", "a word"), ("61", "past 60"), ("-1", "negative"), ("nan", "NaN"), ("inf", "inf")],
)
def test_a_wait_out_of_range_is_refused(make_app: AppFactory, wait: str, problem: str) -> None:
    app = make_app()
    client = app.test_client()
    submit(client, "w")
    body = assert_error(client.get(f"/api/tasks/w?wait={wait}"), 400, "invalid_parameter")
    assert "wait" in body["details"], problem
    assert_error(client.get("/api/tasks/nope?wait=1"), 404, "not_found")


def test_a_wait_is_woken_by_another_instance_that_ends_the_task(
    make_app: AppFactory,
) -> None:
    """Two apps on one database: one waits, the other runs the task.

    On PostgreSQL the runner's NOTIFY wakes the waiter (its own safety net reads once an
    hour); on SQLite, which cannot notify another process, the waiter's safety net reads
    at the polling interval.
    """
    started, release, gated = _gate()
    runner = running_app(make_app, {"gated": gated})
    dialect = parts.engine(runner).dialect.name
    interval = HOUR_MS if dialect == "postgresql" else "100"
    waiter = make_app(POLLING_INTERVAL=interval)
    submit(waiter.test_client(), "x", type="gated")
    parts.scheduler(runner).wake()
    assert started.wait(30)
    waiting = Waiting(waiter, "/api/tasks/x?wait=60")
    wait_for(_waiting(waiter, 1), what="the request to wait")
    release.set()
    body = waiting.result(timeout=30).get_json()
    assert body["status"] == "COMPLETED" and body["result"] == "done"
