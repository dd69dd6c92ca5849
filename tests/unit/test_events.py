"""The task state-change log: one line per change, text or JSON, written off the hot path."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app import events
from app.events import Events
from tests.support.apps import AppFactory
from tests.support.client import running_app, submit, wait_terminal
from tests.support.waiting import wait_for


@pytest.fixture(autouse=True)
def _info(_quiet_task_events: None) -> Iterator[None]:
    """Turn the lines on: the service sets INFO at start, a bare test process does not."""
    logger = logging.getLogger(events.LOGGER)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(before)


def test_a_change_is_one_text_line_with_id_type_attempt_status_and_reason() -> None:
    out = io.StringIO()
    log = Events("text", out)
    log.add([("a1", "simulate", 1, "RUNNING", "claimed by w-1")])
    log.add([("a1", "simulate", 1, "COMPLETED", "the handler returned")])
    assert log.flush() == 2
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO app\.events "
        r"task a1 RUNNING \(type simulate, attempt 1\): claimed by w-1",
        first,
    )
    assert second.endswith("task a1 COMPLETED (type simulate, attempt 1): the handler returned")
    assert log.flush() == 0  # written once


def test_json_lines_carry_the_fields_and_escape_the_reason() -> None:
    out = io.StringIO()
    log = Events("json", out)
    reason = 'Handler raised: bad "quote"\nsecond line \u00e9'
    log.add([("b-2", "resize", 3, "FAILED", reason), ("c", "t", 0, "QUEUED", "submitted")])
    log.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["task_id"] for line in lines] == ["b-2", "c"]
    first = lines[0]
    assert (first["type"], first["attempt"], first["status"]) == ("resize", 3, "FAILED")
    assert first["reason"] == 'Handler raised: bad "quote" second line \u00e9'
    assert first["level"] == "INFO" and first["logger"] == "app.events"
    assert first["time"].endswith("+00:00")
    assert first["message"] == f"task b-2 FAILED (type resize, attempt 3): {first['reason']}"


def test_a_long_reason_is_cut_short() -> None:
    out = io.StringIO()
    log = Events("json", out)
    log.add([("a", "t", 1, "FAILED", "x" * 5000)])
    log.flush()
    reason = json.loads(out.getvalue())["reason"]
    assert len(reason) == events.MAX_REASON and reason.endswith("...")


def test_the_logger_level_turns_the_lines_off() -> None:
    out = io.StringIO()
    log = Events("text", out)
    logging.getLogger(events.LOGGER).setLevel(logging.WARNING)
    log.add([("a", "t", 1, "RUNNING", "claimed")])
    assert log.flush() == 0
    assert out.getvalue() == ""


def test_a_stream_that_falls_behind_costs_lines_not_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_PENDING", 3)
    out = io.StringIO()
    log = Events("text", out)
    for n in range(5):
        log.add([(f"t{n}", "t", 1, "QUEUED", "submitted")])
    log.flush()
    lines = out.getvalue().splitlines()
    assert [line.split()[4] for line in lines[:3]] == ["t0", "t1", "t2"]
    assert "WARNING" in lines[3] and "2 state change(s) not logged" in lines[3]


def test_the_writer_thread_writes_without_a_flush_and_close_writes_the_rest() -> None:
    out = io.StringIO()
    log = Events("text", out)
    log.add([("a", "t", 1, "RUNNING", "claimed")])
    wait_for(lambda: "task a RUNNING" in out.getvalue(), what="the writer thread to write")
    log.add([("a", "t", 1, "COMPLETED", "done")])
    log.close()
    assert out.getvalue().count("\n") == 2


def test_a_broken_stream_never_raises() -> None:
    out = io.StringIO()
    out.close()
    log = Events("text", out)
    log.add([("a", "t", 1, "RUNNING", "claimed")])
    assert log.flush() == 0


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
    lines = _lines(app, out)
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
