"""The state-change lines of a running app: one per change of a run, of a cancel and of a
retry, and none for a refusal. How a line is written is tests/unit/test_events.py."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask

from app import events
from tests.support.apps import AppFactory
from tests.support.client import running_app, submit, wait_terminal
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("task_events_on")


def _capture(app: Flask) -> io.StringIO:
    """Send the app's state-change lines to a buffer from now on."""
    out = io.StringIO()
    events.of(app.extensions["store"].engine).stream = out
    return out


def _lines(app: Flask, out: io.StringIO) -> list[dict[str, Any]]:
    events.of(app.extensions["store"].engine).flush()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _by_task(lines: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for line in lines:
        found.setdefault(line["task_id"], []).append((line["status"], line["attempt"]))
    return found


def test_every_state_change_of_a_run_is_one_line(make_app: AppFactory) -> None:
    app = running_app(make_app, LOG_FORMAT="json")
    out = _capture(app)
    client = app.test_client()
    submit(client, "a")
    submit(client, "b", "a")
    submit(client, "bad", payload={"fail": True}, max_attempts=2, retry_backoff_ms=1)
    submit(client, "after-bad", "bad")
    wait_terminal(client, "b", "after-bad")

    def logged() -> list[dict[str, Any]] | None:
        # A change is queued for its line just after its commit, which the client may see
        # first: read until the last changes of the run are there.
        found = _lines(app, out)
        ends = {(x["task_id"], x["status"]) for x in found}
        return found if {("b", "COMPLETED"), ("after-bad", "UPSTREAM_FAILED")} <= ends else None

    lines = wait_for(logged, what="the run's last lines")
    runs = _by_task(lines)
    assert runs["a"] == [("QUEUED", 0), ("RUNNING", 1), ("COMPLETED", 1)]
    assert runs["b"] == [("QUEUED", 0), ("RUNNING", 1), ("COMPLETED", 1)]
    assert runs["bad"] == [
        ("QUEUED", 0),
        ("RUNNING", 1),
        ("QUEUED", 1),
        ("RUNNING", 2),
        ("FAILED", 2),
    ]
    assert runs["after-bad"] == [("QUEUED", 0), ("UPSTREAM_FAILED", 0)]
    reasons = {(x["task_id"], x["status"], x["attempt"]): x["reason"] for x in lines}
    assert reasons[("a", "QUEUED", 0)] == "submitted"
    assert reasons[("a", "RUNNING", 1)].startswith("claimed by ")
    assert "will be retried" in reasons[("bad", "QUEUED", 1)]
    assert "payload.fail is true" in reasons[("bad", "FAILED", 2)]
    assert reasons[("after-bad", "UPSTREAM_FAILED", 0)] == (
        "Dependency bad failed, so this task will not run."
    )
    assert all(x["type"] == "simulate" for x in lines)


def test_cancel_and_retry_are_logged_and_refusals_are_not(make_app: AppFactory) -> None:
    app = make_app(LOG_FORMAT="json")
    out = _capture(app)
    client = app.test_client()
    submit(client, "root")
    submit(client, "child", "root")
    assert client.post("/api/tasks/root/cancel").status_code == 200
    assert client.post("/api/tasks/root/retry").status_code == 200
    # Refused: nothing committed, nothing logged.
    assert client.post("/api/tasks/root/retry").status_code == 409
    assert (
        client.post("/api/tasks", json={"type": "simulate", "dependencies": ["x"]}).status_code
        == 400
    )
    runs = _lines(app, out)
    assert [(x["task_id"], x["status"], x["reason"]) for x in runs] == [
        ("root", "QUEUED", "submitted"),
        ("child", "QUEUED", "submitted"),
        ("root", "CANCELLED", "cancelled by a user"),
        ("child", "CANCELLED", "Dependency root was cancelled, so this task will not run."),
        ("root", "QUEUED", "retried by a user"),
        ("child", "QUEUED", "its dependency root was retried"),
    ]
