"""Retries, timeouts, priorities, run_at, trigger rules and progress, on both backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from app import parts
from app.handlers import HandlerFailed, TaskContext
from app.storage.database import utcnow
from app.storage.store import backoff
from tests.support.apps import AppFactory, build_app, teardown
from tests.support.client import running_app, submit, task, wait_status, wait_terminal
from tests.support.handlers import Gate
from tests.support.stepping import Clock, Threads, open_scheduler
from tests.support.waiting import wait_for


def test_backoff_doubles_with_up_to_a_quarter_of_jitter_and_a_cap() -> None:
    for failures in (1, 2, 3, 8):
        delay = backoff(1000, failures).total_seconds()
        floor = 2 ** (failures - 1)
        assert floor <= delay <= floor * 1.25
    assert backoff(86_400_000, 30) == timedelta(hours=1)


def flaky(ctx: TaskContext) -> dict[str, int]:
    """Fail the first two attempts, succeed on the third."""
    if ctx.attempt < 3:
        raise HandlerFailed(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}


def test_a_retry_succeeds_on_the_third_attempt_after_growing_waits(app: Flask) -> None:
    # SQLite: a pass's `now` is the time its claims compare with, so the test moves it.
    stepped = Stepped(app, {"flaky": flaky}, cap=1)
    submit(stepped.client, "f", type="flaky", max_attempts=3, retry_backoff_ms=100)
    failed_at = utcnow()
    assert stepped.pass_at(failed_at) == 1
    for backoff_ms in (100, 200):  # each wait at least the backoff of its attempt
        stepped.threads.finish("f")
        assert stepped.pass_at(failed_at) == 0  # the failure is written, the retry waits
        assert task(stepped.client, "f")["status"] == "QUEUED"
        just_before = failed_at + timedelta(milliseconds=backoff_ms - 1)
        assert stepped.pass_at(just_before) == 0
        failed_at += timedelta(milliseconds=backoff_ms * 1.25)  # at most a quarter of jitter
        assert stepped.pass_at(failed_at) == 1
    stepped.threads.finish("f")
    stepped.pass_at(failed_at)
    done = task(stepped.client, "f")
    assert (done["status"], done["attempts"], done["result"]) == ("COMPLETED", 3, {"attempt": 3})


@pytest.mark.postgres
def test_on_postgresql_a_retry_waits_its_backoff_on_the_database_clock(
    postgres_running: AppFactory,
) -> None:
    # The database's clock decides when a task is due: no test can move it, so this waits.
    starts: list[float] = []
    failures: list[float] = []

    def timed(ctx: TaskContext) -> dict[str, int]:
        starts.append(time.monotonic())
        try:
            return flaky(ctx)
        except HandlerFailed:
            failures.append(time.monotonic())
            raise

    client = running_app(postgres_running, {"flaky": timed}).test_client()
    submit(client, "f", type="flaky", max_attempts=3, retry_backoff_ms=100)
    done = wait_status(client, "f", "COMPLETED", "FAILED")
    assert (done["status"], done["attempts"], done["result"]) == ("COMPLETED", 3, {"attempt": 3})
    # Each wait is at least the backoff of its attempt: 100 ms, then 200 ms.
    assert starts[1] - failures[0] >= 0.1
    assert starts[2] - failures[1] >= 0.2


def test_the_budget_runs_out_and_the_last_error_stays(make_app: AppFactory) -> None:
    client = running_app(make_app).test_client()
    submit(client, "doomed", max_attempts=2, retry_backoff_ms=0, payload={"fail": True})
    submit(client, "after", "doomed")
    done = wait_terminal(client, "doomed", "after")
    assert (done["doomed"]["status"], done["doomed"]["attempts"]) == ("FAILED", 2)
    assert done["after"]["status"] == "UPSTREAM_FAILED"


@pytest.fixture
def postgres_running(postgres_url: str) -> Iterator[AppFactory]:
    """Return a factory of apps on PostgreSQL only; their schedulers stop at teardown."""
    built: list[Flask] = []

    def factory(**env: str) -> Flask:
        built.append(build_app(postgres_url, env))
        return built[-1]

    yield factory
    teardown(built)


class Stepped:
    """An app whose scheduler the test moves: its passes, its monotonic clock, its threads.

    A timeout is measured on the monotonic clock, so these tests move it instead of waiting.
    A handler runs when the test lets its thread return (`threads.finish`).
    """

    def __init__(self, app: Flask, handlers: dict[str, Any] | None = None, cap: int = 4) -> None:
        self.clock = Clock()
        self.threads = Threads(cap)
        registry = parts.registry(app)
        for name, handler in (handlers or {}).items():
            registry.register(name, handler)
        self.scheduler = open_scheduler(
            parts.store(app),
            registry,
            cap=cap,
            executor=lambda _workers: self.threads,
            name=lambda: "stepped",
            clock=self.clock,
        )
        self.client = app.test_client()

    def step(self, seconds: float = 0.0) -> int:
        """Move the clock by `seconds`, run one pass, return how many tasks it started."""
        self.clock.seconds += seconds
        return self.scheduler.run_once()

    def pass_at(self, now: datetime) -> int:
        """Run one pass at the wall-clock time `now` (naive UTC); return how many started."""
        return self.scheduler.run_once(now)


def test_a_timeout_fails_the_attempt_and_cancels_the_handler(make_app: AppFactory) -> None:
    stepped = Stepped(make_app())
    submit(stepped.client, "slow", duration_ms=60_000, timeout_ms=50)
    assert stepped.step() == 1
    (running,) = stepped.scheduler.attempts()
    assert stepped.step(0.049) == 0
    assert task(stepped.client, "slow")["status"] == "RUNNING"  # 1 ms before its deadline
    stepped.step(0.001)
    done = task(stepped.client, "slow")
    assert (done["status"], done["error_code"]) == ("FAILED", "timeout")
    assert "50 ms" in done["error"]
    assert running.cancel.is_set()  # the handler is told to stop
    stepped.threads.finish("slow")  # the simulated handler returns at once when cancelled
    assert task(stepped.client, "slow")["status"] == "FAILED"


def test_a_handler_ignoring_its_timeout_keeps_its_slot(make_app: AppFactory) -> None:
    stepped = Stepped(make_app(), {"gate": lambda ctx: {"late": True}}, cap=1)
    submit(stepped.client, "stubborn", type="gate", timeout_ms=20)
    submit(stepped.client, "next")
    assert stepped.step() == 1
    assert stepped.step(0.02) == 0
    assert task(stepped.client, "stubborn")["error_code"] == "timeout"
    assert task(stepped.client, "next")["status"] == "QUEUED"  # the thread still holds the slot
    assert stepped.step(60) == 0  # however long it runs on
    stepped.threads.finish("stubborn")  # it returns a success, late
    assert stepped.step() == 1
    stepped.threads.finish("next")
    stepped.step()
    assert task(stepped.client, "next")["status"] == "COMPLETED"
    assert task(stepped.client, "next")["attempts"] == 1
    assert task(stepped.client, "stubborn")["status"] == "FAILED"  # its late success is refused


def test_a_cancelled_handler_that_ignores_it_ends_cancelled_at_its_timeout(
    make_app: AppFactory,
) -> None:
    stepped = Stepped(make_app(), {"gate": lambda ctx: {"late": True}})
    submit(stepped.client, "deaf", type="gate", timeout_ms=200, max_attempts=3)
    assert stepped.step() == 1
    (running,) = stepped.scheduler.attempts()
    assert stepped.client.post("/api/tasks/deaf/cancel").status_code == 200
    stepped.step(0.1)  # the pass reads the cancel request and tells the handler
    assert running.cancel.is_set()
    assert task(stepped.client, "deaf")["status"] == "RUNNING"  # it ignores it
    stepped.step(0.1)  # its timeout
    done = task(stepped.client, "deaf")
    assert (done["status"], done["error_code"]) == ("CANCELLED", "cancelled")
    assert "timeout of 200 ms" in done["error"]
    stepped.threads.finish("deaf")  # a success, late
    stepped.step()
    assert task(stepped.client, "deaf")["status"] == "CANCELLED"  # its late success is refused


def test_higher_priority_runs_first_and_fifo_among_equals(make_app: AppFactory) -> None:
    gate = Gate()
    client = running_app(make_app, {"gate": gate}, MAX_CONCURRENT_TASKS="1").test_client()
    submit(client, "blocker", type="gate")
    wait_for(lambda: gate.started == ["blocker"], what="the blocker to start")
    for task_id, priority in (("low", -5), ("mid1", 0), ("high", 10), ("mid2", 0)):
        submit(client, task_id, priority=priority)
    gate.release.set()
    done = wait_terminal(client, "low", "mid1", "high", "mid2")
    order = sorted(done, key=lambda i: done[i]["started_at"])
    assert order == ["high", "mid1", "mid2", "low"]


def test_run_at_holds_a_task_back_until_then(app: Flask) -> None:
    stepped = Stepped(app)
    at = datetime.now(UTC) + timedelta(hours=1)  # the passes below say when it is
    submitted = submit(stepped.client, "later", run_at=at.isoformat())
    assert submitted["run_at"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    blockers = stepped.client.get("/api/tasks/later/blockers").get_json()
    assert blockers["blockers"][0]["kind"] == "run_at"
    run_at = at.replace(tzinfo=None)
    assert stepped.pass_at(run_at - timedelta(milliseconds=1)) == 0
    assert stepped.pass_at(run_at) == 1
    stepped.threads.finish("later")
    stepped.pass_at(run_at)
    done = task(stepped.client, "later")
    assert done["status"] == "COMPLETED"
    assert done["started_at"] >= submitted["run_at"]


@pytest.mark.postgres
def test_on_postgresql_run_at_holds_a_task_back_on_the_database_clock(
    postgres_running: AppFactory,
) -> None:
    client = running_app(postgres_running).test_client()
    at = datetime.now(UTC) + timedelta(milliseconds=300)
    submitted = submit(client, "later", run_at=at.isoformat())
    assert submitted["run_at"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    blockers = client.get("/api/tasks/later/blockers").get_json()
    answered = datetime.now(UTC)
    # On a slow machine the answer may come when the task is due already;
    # one that came well before its time must name the time as the blocker.
    if answered < at - timedelta(milliseconds=50):
        assert blockers["status"] == "QUEUED"
        assert blockers["blockers"][0]["kind"] == "run_at"
    done = wait_status(client, "later", "COMPLETED")
    assert done["started_at"] >= submitted["run_at"]


# Bare numbers JSON keeps exactly and a float column would not: beyond 64 bits, a float
# with no fraction, the smallest 64-bit integer less one.
BARE_RESULTS = {"big": 2**63, "huge": 10**30, "whole": 3.0, "low": -(2**63) - 1, "text": "12"}


def test_a_result_comes_back_as_the_handler_returned_it(make_app: AppFactory) -> None:
    """A bare number is kept as returned, to the API and to a dependent (SQLite stored
    `2**63` as a float, and `3.0` as `3`, before migration 0014)."""
    seen: dict[str, Any] = {}

    def collect(ctx: TaskContext) -> None:
        seen.update(ctx.dependency_results)

    handlers = {"echo": lambda ctx: BARE_RESULTS[ctx.payload["k"]], "collect": collect}
    client = running_app(make_app, handlers).test_client()
    for name in BARE_RESULTS:
        submit(client, name, type="echo", payload={"k": name})
    submit(client, "collect", *BARE_RESULTS, type="collect")
    done = wait_terminal(client, *BARE_RESULTS, "collect")
    shown = {name: done[name]["result"] for name in BARE_RESULTS}
    assert done["collect"]["status"] == "COMPLETED"
    for got in (shown, seen):
        assert got == BARE_RESULTS
        assert {name: type(value) for name, value in got.items()} == {
            name: type(value) for name, value in BARE_RESULTS.items()
        }


def test_all_done_cleanup_runs_after_a_failure(make_app: AppFactory) -> None:
    client = running_app(make_app).test_client()
    submit(client, "work", payload={"fail": True})
    submit(client, "other")
    submit(client, "cleanup", "work", "other", trigger_rule="all_done")
    submit(client, "report", "cleanup")
    submit(client, "skipped", "work")
    done = wait_terminal(client, "work", "other", "cleanup", "report", "skipped")
    assert done["work"]["status"] == "FAILED"
    assert done["cleanup"]["status"] == "COMPLETED"
    assert done["report"]["status"] == "COMPLETED"
    assert done["skipped"]["status"] == "UPSTREAM_FAILED"
    assert done["cleanup"]["started_at"] >= done["work"]["finished_at"]


def test_a_progress_that_is_no_number_is_ignored_not_fatal(make_app: AppFactory) -> None:
    """Before, progress(None) or progress(nan) raised inside the handler and failed it."""

    def odd(ctx: TaskContext) -> str:
        for value in (None, float("nan"), float("inf"), "x", 40):
            ctx.progress(value)  # type: ignore[arg-type]
        return "done"

    client = running_app(make_app, {"odd": odd}).test_client()
    submit(client, "o", type="odd")
    done = wait_status(client, "o", "COMPLETED", "FAILED")
    assert (done["status"], done["result"], done["progress"]) == ("COMPLETED", "done", 40)


def test_progress_is_reported_while_running(make_app: AppFactory) -> None:
    gate = Gate()
    client = running_app(make_app, {"gate": gate}).test_client()
    submit(client, "p", type="gate")
    wait_for(lambda: task(client, "p")["progress"] == 50, what="progress 50")
    gate.release.set()
    assert wait_status(client, "p", "COMPLETED")["result"] == {"released": "p"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 1001),
        ("priority", "high"),
        ("max_attempts", 0),
        ("max_attempts", 101),
        ("retry_backoff_ms", -1),
        ("timeout_ms", 0),
        ("run_at", "tomorrow"),
        ("trigger_rule", "one_success"),
    ],
)
def test_new_fields_are_validated(make_app: AppFactory, field: str, value: object) -> None:
    client = make_app().test_client()
    body = {"type": "t", "duration_ms": 1, field: value}
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 400
    assert response.get_json()["code"] == "validation_error"
    assert field in response.get_json()["details"]
