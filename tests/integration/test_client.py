"""app.client against a real HTTP server: the app served by werkzeug in a thread, its
scheduler running, on both backends.

The tests of `wait`'s long poll (`?wait=`) and of `attempts` need those server routes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from app import start_scheduler
from app.client import (
    ApiError,
    BadRequest,
    Client,
    Conflict,
    NotFound,
    Task,
    TooManyRequests,
    Unauthorized,
)
from app.handlers import TaskContext
from tests.support.apps import AppFactory
from tests.support.auth import TOKEN
from tests.support.waiting import wait_for

FUTURE = "2036-01-01T00:00:00Z"  # a run_at that keeps a task QUEUED
FOREVER_MS = 3_600_000  # a simulated task that runs until cancelled or shut down
PATIENCE_S = 30.0  # generous deadline for what takes milliseconds


@dataclass
class Served:
    """An app served over HTTP, and the requests it received ("METHOD /raw/uri?query")."""

    app: Flask
    url: str
    seen: list[str]

    def client(self, **options: Any) -> Client:
        """Return a Client of this server."""
        return Client(self.url, **options)

    def requests(self, prefix: str) -> list[str]:
        """Return the requests received that start with `prefix`, e.g. "GET /api/tasks/a"."""
        return [line for line in self.seen if line.startswith(prefix)]


Serve = Callable[..., Served]


@pytest.fixture
def serve(make_app: AppFactory) -> Iterator[Serve]:
    """Return a function that builds an app (settings and handlers as given), starts its
    scheduler and serves it on a free port; every server stops at teardown."""
    stops: list[Callable[[], None]] = []

    def start(handlers: dict[str, Any] | None = None, **env: str) -> Served:
        app = make_app(**{"SCHEDULER_ENABLED": "true", "POLLING_INTERVAL": "50", **env})
        for name, handler in (handlers or {}).items():
            app.extensions["registry"].register(name, handler)
        start_scheduler(app)
        seen: list[str] = []
        wsgi = app.wsgi_app

        def record(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            seen.append(f"{environ['REQUEST_METHOD']} {environ['REQUEST_URI']}")
            return wsgi(environ, start_response)

        app.wsgi_app = record  # type: ignore[method-assign]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(10)

        stops.append(stop)
        return Served(app, f"http://127.0.0.1:{server.server_port}", seen)

    yield start
    for stop in stops:
        stop()


def simulated(task_id: str, **fields: Any) -> dict[str, Any]:
    """Return the body of a 1 ms simulated task."""
    return {"id": task_id, "type": "simulate", "duration_ms": 1, **fields}


def assert_utc(*stamps: datetime | None) -> None:
    """Check that each time is an aware UTC datetime."""
    for stamp in stamps:
        offset = None if stamp is None else stamp.utcoffset()
        assert offset is not None and offset.total_seconds() == 0, stamp


class Flaky:
    """A handler that raises for its first `failures` calls, then returns its call count."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, ctx: TaskContext) -> dict[str, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")
        return {"calls": self.calls}


def reports(ctx: TaskContext) -> dict[str, Any]:
    """A handler that reports progress and returns its payload."""
    ctx.progress(100)
    return {"echo": ctx.payload}


def test_submit_answers_the_typed_task_and_a_replay_the_same_task(serve: Serve) -> None:
    served = serve()
    client = served.client()
    body = simulated("a", payload={"table": "orders"}, priority=5)
    task = client.submit(body, run_at=FUTURE)
    assert isinstance(task, Task)
    assert (task.id, task.type, task.duration_ms, task.status) == ("a", "simulate", 1, "QUEUED")
    assert (task.payload, task.priority, task.dependencies, task.extra) == (
        {"table": "orders"},
        5,
        (),
        {},
    )
    assert task.run_at == datetime(2036, 1, 1, tzinfo=UTC)
    assert_utc(task.created_at, task.updated_at)
    assert not task.terminal and task.attempts == 0 and task.started_at is None

    again = client.submit(**body, run_at=FUTURE)
    assert again == task
    assert client.request("POST", "/api/tasks", {**body, "run_at": FUTURE}).status == 200
    assert served.seen.count("POST /api/tasks") == 3


def test_a_finished_task_has_every_field_typed(serve: Serve) -> None:
    client = serve({"reports": reports}).client()
    client.submit(
        id="r",
        type="reports",
        duration_ms=5,
        payload={"n": 2},
        max_attempts=2,
        timeout_ms=60_000,
        run_at="2020-01-01T00:00:00Z",
        queue="reports",
    )
    task = client.wait("r", PATIENCE_S)
    assert (task.status, task.terminal, task.result) == ("COMPLETED", True, {"echo": {"n": 2}})
    assert (task.attempts, task.max_attempts, task.timeout_ms, task.queue) == (
        1,
        2,
        60_000,
        "reports",
    )
    assert (task.progress, task.error, task.error_code) == (100, None, None)
    assert task.run_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert_utc(task.created_at, task.updated_at, task.started_at, task.finished_at)
    assert task.created_at <= task.started_at <= task.finished_at  # type: ignore[operator]
    assert isinstance(task.worker, str) and task.worker
    assert task == client.get("r")


def test_submit_batch_answers_the_batch_and_a_replay_the_same_one(serve: Serve) -> None:
    client = serve().client()
    tasks = [
        simulated("report", dependencies=["clean"]),
        simulated("clean", dependencies=["extract"]),
        simulated("extract"),
    ]
    batch = client.submit_batch(tasks)
    assert batch.created and len(batch.batch_id) == 32
    assert [t.id for t in batch.tasks] == ["report", "clean", "extract"]
    assert {t.batch_id for t in batch.tasks} == {batch.batch_id}
    assert batch.tasks[0].dependencies == ("clean",)
    replay = client.submit_batch({"tasks": tasks})  # the API's body, given whole
    assert (replay.created, replay.batch_id) == (False, batch.batch_id)
    with pytest.raises(TypeError, match=r"the tasks, or a body \{"):
        client.submit_batch({"task": tasks})
    assert client.wait("report", PATIENCE_S).status == "COMPLETED"


def test_ids_are_quoted_in_urls(serve: Serve) -> None:
    served = serve()
    client = served.client()
    client.submit(simulated("a", run_at=FUTURE))
    assert client.get("a").id == "a"
    with pytest.raises(NotFound) as caught:
        client.get("a/b")
    assert caught.value.code == "not_found"
    assert served.requests("GET /api/tasks/a%2Fb")
    # Never another route's answer taken for a task: "a/status" is not the task "a".
    with pytest.raises(NotFound):
        client.get("a/status")
    assert served.requests("GET /api/tasks/a%2Fstatus")


def test_a_failing_task_fails_its_dependents_and_comes_back_on_retry(serve: Serve) -> None:
    client = serve().client()
    client.submit(simulated("f", payload={"fail": True}))
    client.submit(simulated("g", dependencies=["f"]))
    failed = client.wait("f", PATIENCE_S)
    assert (failed.status, failed.error_code, failed.terminal) == ("FAILED", "handler_error", True)
    assert "payload.fail" in (failed.error or "")
    below = client.wait("g", PATIENCE_S)
    assert (below.status, below.error_code, below.attempts) == (
        "UPSTREAM_FAILED",
        "upstream_failed",
        0,
    )
    with pytest.raises(Conflict) as caught:
        client.retry("g")  # its dependency must be retried instead
    assert (caught.value.code, caught.value.details.get("root")) == ("invalid_state", "f")

    retried = client.retry("f")
    assert (retried.status, retried.attempts, retried.error) == ("QUEUED", 1, None)
    assert client.wait("f", PATIENCE_S).attempts == 2
    assert client.wait("g", PATIENCE_S).status == "UPSTREAM_FAILED"


def test_cancel_and_retry_and_their_conflicts(serve: Serve) -> None:
    client = serve().client()
    client.submit(simulated("later", run_at=FUTURE))
    cancelled = client.cancel("later")
    assert (cancelled.status, cancelled.error_code) == ("CANCELLED", "cancelled")
    with pytest.raises(Conflict) as caught:
        client.cancel("later")
    assert (caught.value.status, caught.value.code) == (409, "invalid_state")
    assert client.retry("later").status == "QUEUED"
    with pytest.raises(Conflict):
        client.retry("later")
    with pytest.raises(NotFound):
        client.cancel("no-such-task")


def test_each_error_answer_raises_its_class(serve: Serve) -> None:
    served = serve()
    client = served.client()
    with pytest.raises(NotFound) as missing:
        client.get("no-such-task")
    assert (missing.value.status, missing.value.code, missing.value.retry_after) == (
        404,
        "not_found",
        None,
    )
    assert missing.value.message and isinstance(missing.value, ApiError)

    with pytest.raises(BadRequest) as invalid:
        client.submit(simulated("x", duration_ms="5"))
    assert (invalid.value.status, invalid.value.code) == (400, "validation_error")
    assert "duration_ms" in invalid.value.details
    # What a traceback shows names the field, not only "The task is invalid."
    shown = str(invalid.value)
    assert shown.startswith("400 validation_error: The task is invalid. (duration_ms: ")

    with pytest.raises(BadRequest) as unknown:
        client.submit(simulated("x", dependencies=["ghost"]))
    assert unknown.value.code == "unknown_dependency"
    assert unknown.value.details["missing"] == ["ghost"]

    client.submit(simulated("x", run_at=FUTURE))
    with pytest.raises(Conflict) as duplicate:
        client.submit(simulated("x", run_at=FUTURE, duration_ms=2))
    assert duplicate.value.code == "duplicate_id"
    assert "duration_ms" in str(duplicate.value.details)
    assert served.seen.count("POST /api/tasks") == 4  # no error was repeated


def test_a_token_is_sent_as_a_bearer(serve: Serve) -> None:
    served = serve(API_TOKEN=TOKEN)
    with pytest.raises(Unauthorized) as caught:
        served.client().get("a")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with pytest.raises(Unauthorized):
        served.client(token="x" * len(TOKEN)).get("a")
    client = served.client(token=TOKEN)
    assert client.submit(simulated("a")).id == "a"
    assert client.wait("a", PATIENCE_S).status == "COMPLETED"


def test_a_full_queue_is_waited_out_and_the_submission_repeated(serve: Serve) -> None:
    served = serve(MAX_QUEUED_TASKS="1")
    other = served.client()
    other.submit(simulated("held", run_at=FUTURE))
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # while "waiting", the queue drains
        slept.append(seconds)
        other.cancel("held")

    task = served.client(sleep=sleep).submit(simulated("next"))
    assert task.id == "next"
    assert slept == [1.0]  # the Retry-After: one polling interval, at least a second
    assert served.seen.count("POST /api/tasks") == 3


def test_a_queue_that_stays_full_raises_after_the_retries(serve: Serve) -> None:
    served = serve(MAX_QUEUED_TASKS="1")
    served.client().submit(simulated("held", run_at=FUTURE))
    slept: list[float] = []
    client = served.client(retries=2, sleep=slept.append)
    with pytest.raises(TooManyRequests) as caught:
        client.submit(simulated("next"))
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "queue_full", 1.0)
    assert (error.details["limit"], error.details["queued"]) == (1, 1)
    assert slept == [1.0, 1.0]
    assert served.seen.count("POST /api/tasks") == 1 + 3
    with pytest.raises(TooManyRequests):
        client.submit_batch([simulated("b1"), simulated("b2")])


def test_wait_returns_as_soon_as_the_task_is_terminal(serve: Serve) -> None:
    client = serve().client()
    client.submit(simulated("soon", duration_ms=300))
    started = time.monotonic()
    task = client.wait("soon", PATIENCE_S)
    assert (task.status, task.terminal) == ("COMPLETED", True)
    assert time.monotonic() - started < PATIENCE_S / 2


def test_wait_answers_the_unfinished_task_at_the_deadline(serve: Serve) -> None:
    client = serve().client()
    client.submit(simulated("long", duration_ms=FOREVER_MS))
    started = time.monotonic()
    task = client.wait("long", 1.0)
    elapsed = time.monotonic() - started
    assert task.status in ("QUEUED", "RUNNING") and not task.terminal
    assert 0.9 <= elapsed < 15
    with pytest.raises(NotFound):
        client.wait("no-such-task", 1.0)


def test_wait_long_polls_the_server(serve: Serve) -> None:
    """Needs the server's `GET /api/tasks/<id>?wait=S`."""
    served = serve()
    client = served.client()
    client.submit(simulated("long", duration_ms=FOREVER_MS))
    started = time.monotonic()
    answer = client.request("GET", "/api/tasks/long", query={"wait": "0.5"})
    assert answer.status == 200 and Task.from_json(answer.body).id == "long"
    assert time.monotonic() - started >= 0.4  # held until the deadline

    client.submit(simulated("short", duration_ms=500))
    assert client.wait("short", PATIENCE_S).status == "COMPLETED"
    waits = served.requests("GET /api/tasks/short")
    assert waits and len(waits) <= 2, waits  # one long poll, not a poll every 0.1 s
    assert all("?wait=" in line for line in waits), waits

    assert not client.wait("long", 1.5).terminal
    assert len(served.requests("GET /api/tasks/long?wait=")) <= 3


def test_attempts_list_each_attempt_oldest_first(serve: Serve) -> None:
    """Needs the server's `GET /api/tasks/<id>/attempts`."""
    client = serve({"flaky": Flaky(failures=2)}).client()
    client.submit(id="later", type="simulate", duration_ms=1, run_at=FUTURE)
    assert client.attempts("later") == []
    with pytest.raises(NotFound):
        client.attempts("no-such-task")

    client.submit(id="f", type="flaky", duration_ms=1, max_attempts=3, retry_backoff_ms=0)
    task = client.wait("f", PATIENCE_S)
    assert (task.status, task.attempts) == ("COMPLETED", 3)
    attempts = client.attempts("f")
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert [a.outcome for a in attempts] == ["FAILED", "FAILED", "COMPLETED"]
    for number, failed in enumerate(attempts[:2], start=1):
        assert f"boom {number}" in (failed.error or "")
        assert failed.error_code == "handler_error"
        assert "Traceback" in (failed.traceback or "") and "RuntimeError" in (
            failed.traceback or ""
        )
    last = attempts[2]
    assert (last.error, last.error_code, last.traceback) == (None, None, None)
    for attempt in attempts:
        assert_utc(attempt.finished_at)
        if attempt.started_at is not None:
            assert_utc(attempt.started_at)
            assert attempt.started_at <= attempt.finished_at  # type: ignore[operator]


def test_wait_waits_out_a_worker_that_holds_too_many_waits(serve: Serve) -> None:
    """Needs the server's `?wait=` and MAX_WAITING_REQUESTS."""
    served = serve(MAX_WAITING_REQUESTS="1")
    other = served.client()
    other.submit(simulated("held", duration_ms=FOREVER_MS))
    other.submit(simulated("long", duration_ms=FOREVER_MS))
    holder = threading.Thread(target=other.wait, args=("held", PATIENCE_S), daemon=True)
    holder.start()
    waiters = served.app.extensions["waiters"]
    wait_for(lambda: waiters.waiting == 1, what="the first wait to hold the only slot")
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # meanwhile, the first wait ends
        slept.append(seconds)
        other.cancel("held")
        holder.join(PATIENCE_S)

    task = served.client(sleep=sleep).wait("long", 2.0)
    assert task.id == "long" and not task.terminal
    assert slept == [1.0]  # the 503's Retry-After
    assert len(served.requests("GET /api/tasks/long?wait=")) == 2
    assert not holder.is_alive()
