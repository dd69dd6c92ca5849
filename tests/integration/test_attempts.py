"""Attempt history: every attempt that ended is kept with its outcome, where it ran, its
error and the handler's traceback, written in the transaction that wrote the outcome."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select

from app import parts
from app.handlers import HandlerFailed, TaskContext
from app.runtime.attempt import MAX_TRACEBACK_CHARS, _traceback
from app.storage import database
from app.storage.tables import task_attempts
from tests.support.apps import AppFactory
from tests.support.client import assert_error, running_app, submit, wait_status, wait_terminal
from tests.support.waiting import wait_for


def _attempts(app: Flask, task_id: str) -> dict[str, Any]:
    response = app.test_client().get(f"/api/tasks/{task_id}/attempts")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def _flaky(failures: int) -> Any:
    calls = {"n": 0}

    def handler(ctx: TaskContext) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ValueError(f"failure number {calls['n']}")
        return {"calls": calls["n"]}

    return handler


def test_a_task_failing_twice_then_succeeding_shows_three_attempts(
    make_app: AppFactory,
) -> None:
    app = running_app(make_app, {"flaky": _flaky(2)})
    client = app.test_client()
    submit(client, "f", type="flaky", max_attempts=3, retry_backoff_ms=1)
    assert wait_terminal(client, "f")["f"]["status"] == "COMPLETED"

    body = _attempts(app, "f")
    assert body["task_id"] == "f" and body["total"] == 3
    first, second, third = body["attempts"]
    assert [a["attempt"] for a in body["attempts"]] == [1, 2, 3]
    assert [a["outcome"] for a in body["attempts"]] == ["FAILED", "FAILED", "COMPLETED"]
    for number, attempt in ((1, first), (2, second)):
        assert attempt["error"] == f"The handler raised ValueError: failure number {number}"
        assert attempt["error_code"] == "handler_error"
        assert attempt["traceback"].startswith("Traceback (most recent call last):")
        assert f"ValueError: failure number {number}" in attempt["traceback"]
        assert "in handler" in attempt["traceback"]  # the handler's own frame
    assert third["error"] is None and third["traceback"] is None
    instance = parts.scheduler(app).id
    for attempt in body["attempts"]:
        assert attempt["instance"] == instance
        assert attempt["host"] and ":" not in attempt["host"]
        assert attempt["started_at"] <= attempt["finished_at"]
    assert first["finished_at"] <= second["started_at"]


def test_attempts_that_return_nothing_are_recorded_as_their_rows_show_them(
    make_app: AppFactory,
) -> None:
    """A pass completes the attempts that returned nothing in one statement, and the
    database writes their history rows from the rows it completed."""
    app = running_app(make_app, {"quiet": lambda ctx: None})
    client = app.test_client()
    ids = [f"q{i}" for i in range(5)]
    for task_id in ids:
        submit(client, task_id, type="quiet")
    finished = wait_terminal(client, *ids)
    instance = parts.scheduler(app).id
    for task_id in ids:
        task = finished[task_id]
        assert task["status"] == "COMPLETED", task
        body = _attempts(app, task_id)
        assert body["total"] == 1, body
        (attempt,) = body["attempts"]
        assert attempt["attempt"] == 1 and attempt["outcome"] == "COMPLETED"
        assert attempt["instance"] == instance
        assert attempt["host"] and ":" not in attempt["host"]
        assert (attempt["started_at"], attempt["finished_at"]) == (
            task["started_at"],
            task["finished_at"],
        )
        assert attempt["error"] is None and attempt["traceback"] is None


def test_a_deliberate_failure_and_a_timeout_are_recorded_with_their_codes(
    make_app: AppFactory,
) -> None:
    def refuse(ctx: TaskContext) -> None:
        raise HandlerFailed("not today")

    def overrun(ctx: TaskContext) -> None:
        ctx.cancel.wait(30)

    app = running_app(make_app, {"refuse": refuse, "overrun": overrun})
    client = app.test_client()
    submit(client, "r", type="refuse")
    submit(client, "t", type="overrun", timeout_ms=50)
    wait_terminal(client, "r", "t")

    (refused,) = _attempts(app, "r")["attempts"]
    assert (refused["outcome"], refused["error"]) == ("FAILED", "not today")
    assert "HandlerFailed: not today" in refused["traceback"]
    (timed_out,) = _attempts(app, "t")["attempts"]
    assert (timed_out["outcome"], timed_out["error_code"]) == ("FAILED", "timeout")
    assert timed_out["traceback"] is None


def test_the_running_attempt_is_listed_last_and_a_cancelled_one_ends_cancelled(
    make_app: AppFactory,
) -> None:
    started = threading.Event()

    def long(ctx: TaskContext) -> None:
        started.set()
        ctx.cancel.wait(30)
        raise RuntimeError("stopped")

    app = running_app(make_app, {"long": long})
    client = app.test_client()
    submit(client, "l", type="long")
    assert started.wait(30)
    running = _attempts(app, "l")
    assert running["total"] == 1
    (now,) = running["attempts"]
    assert now["outcome"] == "RUNNING" and now["finished_at"] is None
    assert now["instance"] == parts.scheduler(app).id and now["host"]

    assert client.post("/api/tasks/l/cancel").status_code == 200
    wait_status(client, "l", "CANCELLED")
    (ended,) = _attempts(app, "l")["attempts"]
    assert ended["outcome"] == "CANCELLED" and ended["error_code"] == "cancelled"
    assert ended["finished_at"] is not None


def test_an_attempt_put_back_at_shutdown_is_recorded_as_queued(make_app: AppFactory) -> None:
    started = threading.Event()

    def stubborn(ctx: TaskContext) -> None:
        started.set()
        ctx.cancel.wait(30)

    app = running_app(make_app, {"stubborn": stubborn}, SHUTDOWN_GRACE_S="0")
    client = app.test_client()
    submit(client, "s", type="stubborn")
    assert started.wait(30)
    parts.scheduler(app).stop(0)

    (back,) = _attempts(app, "s")["attempts"]
    assert back["outcome"] == "QUEUED" and back["attempt"] == 1
    assert "back in the queue" in back["error"]
    assert client.get("/api/tasks/s").get_json()["status"] == "QUEUED"


def test_an_interrupted_attempt_names_the_dead_instance_and_its_host(
    make_app: AppFactory,
) -> None:
    app = make_app()
    store = parts.store(app)
    client = app.test_client()
    submit(client, "i")
    store.register(
        {
            "id": "gone-1",
            "hostname": "elsewhere:boot:ns",
            "pid": 1,
            "started_at": store.database_now(),
            "heartbeat_at": store.database_now(),
        }
    )
    store.hosts.clear()  # another process registered it
    (claim,) = store.claim("gone-1", 1)
    assert store.reap("gone-1", "its instance died") == ["i"]

    (interrupted,) = _attempts(app, "i")["attempts"]
    assert interrupted["outcome"] == "FAILED" and interrupted["error_code"] == "interrupted"
    assert (interrupted["instance"], interrupted["host"]) == ("gone-1", "elsewhere")
    assert interrupted["started_at"] is not None and claim.started_at is not None


def test_attempts_go_with_their_task(make_app: AppFactory) -> None:
    app = running_app(make_app, {"flaky": _flaky(1)})
    client = app.test_client()
    submit(client, "gone", type="flaky", max_attempts=2, retry_backoff_ms=1)
    submit(client, "kept", type="flaky", max_attempts=2, retry_backoff_ms=1)
    wait_terminal(client, "gone", "kept")
    assert _attempts(app, "gone")["total"] == 2

    assert client.delete("/api/tasks/gone").status_code == 204
    with database.read(parts.engine(app)) as conn:
        left = conn.execute(
            select(task_attempts.c.task_id, func.count()).group_by(task_attempts.c.task_id)
        ).all()
    assert [tuple(r) for r in left] == [("kept", 1)]
    assert_error(client.get("/api/tasks/gone/attempts"), 404, "not_found")


def test_the_attempts_route_refuses_what_it_does_not_know(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    submit(client, "q")
    assert _attempts(app, "q") == {"task_id": "q", "attempts": [], "total": 0}
    assert_error(client.get("/api/tasks/nope/attempts"), 404, "not_found")
    assert_error(client.get("/api/tasks/q/attempts?limit=5"), 400, "invalid_parameter")
    assert_error(client.get("/api/tasks/%00/attempts"), 404, "not_found")


def test_a_long_traceback_keeps_its_first_line_and_where_it_raised() -> None:
    # Two functions in turn: Python folds a frame repeated as is into one line.
    def down(n: int) -> None:
        if n == 0:
            raise KeyError("at the bottom")
        further(n - 1)

    def further(n: int) -> None:
        down(n)

    try:
        down(300)
    except KeyError as exc:
        text = _traceback(exc)
    assert len(text) <= MAX_TRACEBACK_CHARS
    assert text.startswith("Traceback (most recent call last):\n")
    assert "earlier frames left out" in text
    assert text.rstrip().endswith("KeyError: 'at the bottom'")
    assert 'raise KeyError("at the bottom")' in text


def test_a_long_message_leaves_the_frames_in_the_traceback() -> None:
    def raising() -> None:
        raise ValueError("x" * 100_000)

    try:
        raising()
    except ValueError as exc:
        text = _traceback(exc)
    assert len(text) <= MAX_TRACEBACK_CHARS
    assert 'raise ValueError("x" * 100_000)' in text  # where it raised
    assert "characters left out" in text and "earlier frames" not in text


def test_instances_show_their_host_slots_and_running_attempts(make_app: AppFactory) -> None:
    started = threading.Event()

    def hold(ctx: TaskContext) -> None:
        started.set()
        ctx.cancel.wait(30)

    app = running_app(make_app, {"hold": hold}, MAX_CONCURRENT_TASKS="4")
    client = app.test_client()
    submit(client, "h", type="hold")
    assert started.wait(30)
    scheduler = parts.scheduler(app)

    def listed() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = client.get("/api/instances").get_json()
        return found if found and found[0]["running"] == 1 else None

    (instance,) = wait_for(listed, what="the instance to show its running attempt")
    assert instance["id"] == scheduler.id
    assert instance["slots"] == 4 and instance["state"] == "running"
    assert instance["pid"] > 0 and instance["host"] and ":" not in instance["host"]
    assert instance["queues"] is None and "hold" in instance["types"]
    assert instance["started_at"] <= instance["heartbeat_at"]
    assert_error(client.get("/api/instances?x=1"), 400, "invalid_parameter")
    client.post("/api/tasks/h/cancel")
    wait_terminal(client, "h")
    scheduler.stop(5)
    assert client.get("/api/instances").get_json() == []


def test_a_nul_or_a_lone_surrogate_in_what_a_handler_raised_fails_only_its_attempt(
    make_app: AppFactory,
) -> None:
    """PostgreSQL refuses NUL in text, and neither database can encode a lone surrogate:
    written as they came, the pass that carried them failed, and every pass after it."""

    def chained_nul(ctx: TaskContext) -> None:
        try:
            raise ValueError("inner \x00 nul")
        except ValueError as exc:
            raise HandlerFailed("clean message") from exc

    def surrogate(ctx: TaskContext) -> None:
        raise HandlerFailed("bad \ud800 and \x00 here")

    def long_surrogate(ctx: TaskContext) -> None:
        raise ValueError("a" * 1500 + "\udfff")  # past the error's 1,000 characters

    handlers = {"nul": chained_nul, "surrogate": surrogate, "long": long_surrogate}
    app = running_app(make_app, handlers)
    client = app.test_client()
    for name in handlers:
        submit(client, name, type=name)
    submit(client, "after")
    done = wait_terminal(client, *handlers, "after")
    assert done["after"]["status"] == "COMPLETED"
    assert {name: done[name]["status"] for name in handlers} == dict.fromkeys(handlers, "FAILED")
    assert done["surrogate"]["error"] == "bad \ufffd and \ufffd here"
    for name in handlers:
        (attempt,) = _attempts(app, name)["attempts"]
        assert attempt["outcome"] == "FAILED" and attempt["traceback"]
        assert name == "long" or "\ufffd" in attempt["traceback"]  # cut before it there
    assert "inner \ufffd nul" in _attempts(app, "nul")["attempts"][0]["traceback"]


def test_an_instance_silent_for_a_lease_shows_as_stale(make_app: AppFactory) -> None:
    """Killed, it stays registered until a scheduler reaps it: the list says it is stale
    rather than running."""
    app = make_app(LEASE_S="30")
    store = parts.store(app)
    now = store.database_now()
    for name, heard in (("alive", now), ("silent", now - timedelta(seconds=31))):
        store.register(
            {
                "id": name,
                "hostname": "h:boot:ns",
                "pid": 1,
                "started_at": now - timedelta(minutes=5),
                "heartbeat_at": heard,
            }
        )
    shown = {i["id"]: i["state"] for i in app.test_client().get("/api/instances").get_json()}
    assert shown == {"alive": "running", "silent": "stale"}
