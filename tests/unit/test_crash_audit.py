"""The audit of the crash loop (scripts/crash_audit.py): proof that it bites.

These tests feed the audit a small consistent history, then the same history with one
fault in it, and expect that fault to be named: a check that never fires proves nothing.
The loop itself runs in tests/system/test_crash_loop.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scripts.crash_audit import EPOCH, Run, Stored, audit, read_ledger

# -- the audit on a made-up history -----------------------------------------------------------

KILLED_PID, LIVE_PID = 100, 200


@dataclass(frozen=True)
class Row:
    """The columns of a stored task that the audit reads."""

    id: str
    status: str
    attempts: int
    failures: int
    max_attempts: int
    error_code: str | None
    worker: str
    started_at: datetime | None
    finished_at: datetime | None


def at(ms: int) -> datetime:
    """Return a stored time `ms` after the epoch."""
    return EPOCH + timedelta(milliseconds=ms)


def ns(ms: int) -> int:
    return ms * 1_000_000


PLAN: list[dict[str, Any]] = [
    {"id": "a", "dependencies": [], "max_attempts": 3, "payload": {"fail_attempts": 1}},
    {"id": "b", "dependencies": ["a"], "max_attempts": 1},
]


def history() -> tuple[dict[str, Row], dict[tuple[str, int], Run]]:
    """Return a consistent end: `a` failed by design, lost an attempt to a kill, then
    completed; `b` ran after it, once."""
    rows = {
        "a": Row("a", "COMPLETED", 3, 2, 3, None, f"h-{LIVE_PID}-x", at(30), at(40)),
        "b": Row("b", "COMPLETED", 1, 0, 1, None, f"h-{LIVE_PID}-x", at(41), at(50)),
    }
    runs = {
        ("a", 1): Run(KILLED_PID, ns(1), ns(5)),  # failed by design
        ("a", 2): Run(KILLED_PID, ns(10)),  # killed while it ran
        ("a", 3): Run(LIVE_PID, ns(30), ns(39)),
        ("b", 1): Run(LIVE_PID, ns(42), ns(49)),
    }
    return rows, runs


def check(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> dict[str, list[str]]:
    stored = Stored(rows, {"b": {"a"}}, instances=0, orphan_edges=0)
    return dict(audit(PLAN, {"a", "b"}, stored, runs, {KILLED_PID}).violations)


def test_the_audit_passes_a_consistent_history() -> None:
    assert check(*history()) == {}


Fault = Callable[[dict[str, Row], dict[tuple[str, int], Run]], None]


def lose_b(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    del rows["b"], runs[("b", 1)]


def one_attempt_too_many(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    rows["a"] = replace(rows["a"], attempts=4, failures=3)
    runs[("a", 4)] = runs.pop(("a", 3))


def b_starts_early(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    runs[("b", 1)] = Run(LIVE_PID, ns(35), ns(49))


def b_runs_after_a_failed(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    rows["a"] = replace(rows["a"], status="FAILED", error_code="handler_error")


def interrupted_by_nothing(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    rows["a"] = replace(rows["a"], status="FAILED", error_code="interrupted")
    runs[("a", 3)] = Run(LIVE_PID, ns(30))


def success_run_again(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    runs[("a", 2)] = Run(LIVE_PID, ns(10), ns(20))  # ended well, in a process not killed


def stranger_in_ledger(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    runs[("zz", 1)] = Run(LIVE_PID, ns(1), ns(2))


def completed_without_ending(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    runs[("b", 1)] = Run(LIVE_PID, ns(42))


def still_running(rows: dict[str, Row], runs: dict[tuple[str, int], Run]) -> None:
    rows["b"] = replace(rows["b"], status="RUNNING")


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (lose_b, "accepted but missing"),
        (one_attempt_too_many, "attempts beyond the policy"),
        (b_starts_early, "started before a dependency ended"),
        (b_runs_after_a_failed, "ran although a dependency did not complete"),
        (interrupted_by_nothing, "interrupted, but not by a kill"),
        (success_run_again, "a successful attempt was run again"),
        (stranger_in_ledger, "ledger run of an unknown task"),
        (completed_without_ending, "run never ended in a process that was not killed"),
        (still_running, "not terminal (or cancelled)"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_the_audit_names_each_fault(fault: Fault, kind: str) -> None:
    rows, runs = history()
    fault(rows, runs)
    found = check(rows, runs)
    assert kind in found, found


def test_the_ledger_reader_names_an_attempt_started_twice(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("a 1 10 start 1\na 1 10 end 2\na 1 11 start 3\nb 1 10 end 4\n")
    runs, problems = read_ledger(ledger)
    assert runs == {("a", 1): Run(10, 1, 2)}
    assert len(problems) == 2, problems
    assert "started twice" in problems[0] and "ended without a start" in problems[1]


# A planned task that adds two tasks as it completes, and one that depends on it.
MAPPED: list[dict[str, Any]] = [
    {"id": "m", "dependencies": [], "max_attempts": 1, "payload": {"map": 2}},
    {"id": "d", "dependencies": ["m"], "max_attempts": 1},
]


def mapped_history(
    status: str = "COMPLETED", added: tuple[str, ...] = ("m.m0", "m.m1")
) -> dict[str, list[str]]:
    """Audit `m` ending `status` with the tasks `added` stored, `d` waiting for them all."""
    worker = f"h-{LIVE_PID}-x"
    rows = {
        "m": Row("m", status, 1, int(status != "COMPLETED"), 1, None, worker, at(1), at(10)),
        "d": Row("d", "COMPLETED", 1, 0, 1, None, worker, at(30), at(40)),
    }
    runs = {("m", 1): Run(LIVE_PID, ns(1), ns(9)), ("d", 1): Run(LIVE_PID, ns(31), ns(39))}
    deps = {"d": {"m", *added}}
    for k, child in enumerate(added):
        rows[child] = Row(child, "COMPLETED", 1, 0, 1, None, worker, at(11 + k), at(20 + k))
        runs[(child, 1)] = Run(LIVE_PID, ns(11 + k), ns(19 + k))
        deps[child] = {"m"}
    stored = Stored(rows, deps, instances=0, orphan_edges=0)
    return dict(audit(MAPPED, {"m", "d"}, stored, runs, {KILLED_PID}).violations)


def test_the_audit_accepts_what_a_completion_added() -> None:
    assert mapped_history() == {}


def test_the_audit_names_added_tasks_missing_or_added_by_an_attempt_that_failed() -> None:
    assert "a completed task lacks the tasks it added" in mapped_history(added=("m.m0",))
    failed = mapped_history(status="FAILED")
    assert "added tasks of an attempt that did not complete" in failed


# The attempt history of the consistent end: a failed by design, then killed, then done.
RECORDED = {"a": {1: "FAILED", 2: "FAILED", 3: "COMPLETED"}, "b": {1: "COMPLETED"}}


def check_history(recorded: dict[str, dict[int, str]]) -> dict[str, list[str]]:
    rows, runs = history()
    stored = Stored(rows, {"b": {"a"}}, instances=0, orphan_edges=0, attempts=recorded)
    return dict(audit(PLAN, {"a", "b"}, stored, runs, {KILLED_PID}).violations)


def test_the_audit_passes_a_complete_attempt_history() -> None:
    assert check_history(RECORDED) == {}


@pytest.mark.parametrize(
    ("recorded", "kind"),
    [
        ({**RECORDED, "a": {1: "FAILED", 3: "COMPLETED"}}, "attempt history differs"),
        ({**RECORDED, "b": {}}, "attempt history differs"),
        ({**RECORDED, "a": {**RECORDED["a"], 3: "FAILED"}}, "attempt recorded otherwise"),
        ({**RECORDED, "gone": {1: "FAILED"}}, "attempt history of an unknown task"),
    ],
)
def test_the_audit_names_a_wrong_attempt_history(
    recorded: dict[str, dict[int, str]], kind: str
) -> None:
    assert kind in check_history(recorded)
