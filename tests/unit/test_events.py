"""The task state-change log: one line per change, text or JSON, written off the hot path.

The lines a running app writes are tests/integration/test_events_service.py.
"""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app import events
from app.events import Events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("task_events_on")


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
