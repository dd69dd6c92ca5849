"""An attempt as the scheduler holds it: its cancel event, made when first asked for."""

from __future__ import annotations

import dataclasses
import threading

from app.handlers import Registry, TaskContext
from app.runtime.attempt import Running, call_handler
from app.statuses import Status
from app.storage.store import Claim

CLAIM = Claim("t-1", "watch", 1, {}, 1, "w", 0, 1, 1000)


def test_a_stop_asked_before_the_handler_starts_is_seen_by_it() -> None:
    running = Running(CLAIM)
    running.stop("cancel")
    seen: list[bool] = []

    def watch(ctx: TaskContext) -> None:
        seen.append(ctx.cancel.is_set())

    registry = Registry()
    registry.register("watch", watch)
    outcome = call_handler(registry, running, lambda _percent: None)
    assert seen == [True]
    assert outcome.status is Status.COMPLETED


def test_a_stop_asked_while_the_handler_runs_wakes_its_wait() -> None:
    running = Running(CLAIM)
    waiting = threading.Event()
    woke: list[bool] = []

    def watch(ctx: TaskContext) -> None:
        waiting.set()
        woke.append(ctx.cancel.wait(10))

    registry = Registry()
    registry.register("watch", watch)
    thread = threading.Thread(target=call_handler, args=(registry, running, lambda _p: None))
    thread.start()
    assert waiting.wait(10)
    running.stop("timeout")
    thread.join(10)
    assert woke == [True]
    assert running.stop_reason == "timeout"


def test_threads_asking_at_once_share_one_event() -> None:
    for _ in range(200):
        running = Running(CLAIM)
        start = threading.Barrier(4)
        events: list[threading.Event] = []

        def ask(
            running: Running = running,
            start: threading.Barrier = start,
            events: list[threading.Event] = events,
        ) -> None:
            start.wait()
            events.append(running.cancel)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(event) for event in events}) == 1
        running.stop("cancel")
        assert all(event.is_set() for event in events)


def test_a_handler_that_asks_for_neither_gets_no_event_and_its_progress_is_reported() -> None:
    registry = Registry()
    registry.register("quiet", lambda ctx: {"id": ctx.id, "attempt": ctx.attempt})
    registry.register("reports", lambda ctx: [ctx.progress(p) for p in (30, 100)] and None)
    quiet = Running(CLAIM._replace(type="quiet"))
    outcome = call_handler(registry, quiet, lambda _percent: None)
    assert outcome.result == {"id": "t-1", "attempt": 1}
    assert quiet._cancel is None  # nothing asked for it: none was made
    reported: list[int] = []
    reports = Running(CLAIM._replace(type="reports"))
    assert call_handler(registry, reports, reported.append).status is Status.COMPLETED
    assert reported == [30, 100]


def test_a_context_called_without_a_reader_reads_no_results_and_can_be_replaced() -> None:
    """As a TaskContext: without the scheduler's reader its dependencies have no results,
    `dataclasses.replace` makes another, and an event it is given is its own."""
    seen: list[TaskContext] = []
    registry = Registry()
    registry.register("watch", lambda ctx: seen.append(ctx))
    running = Running(CLAIM)
    call_handler(registry, running, lambda _percent: None)
    (ctx,) = seen
    assert ctx.dependency_results == {}
    copy = dataclasses.replace(ctx, payload={"k": 1})
    assert (copy.id, copy.payload, copy.attempt) == ("t-1", {"k": 1}, 1)
    assert copy.cancel is ctx.cancel  # the attempt's, carried over as a field
    mine = threading.Event()
    ctx.cancel = mine  # as on a TaskContext: the handler's own event from now on
    running.stop("cancel")
    assert ctx.cancel is mine and not mine.is_set()
    assert copy.cancel.is_set()


def test_a_handler_printing_its_context_sees_a_task_context() -> None:
    seen: list[str] = []
    registry = Registry()
    registry.register("show", lambda ctx: seen.append(repr(ctx)))
    call_handler(registry, Running(CLAIM._replace(type="show")), lambda _percent: None)
    (shown,) = seen
    assert shown.startswith("TaskContext(id='t-1', type='show', duration_ms=")
    assert "attempt=1" in shown


def test_a_context_that_holds_itself_prints_as_a_task_context_does() -> None:
    seen: list[str] = []
    registry = Registry()

    def show(ctx: TaskContext) -> None:
        ctx.payload["me"] = ctx
        seen.append(repr(ctx))

    registry.register("show", show)
    outcome = call_handler(registry, Running(CLAIM._replace(type="show")), lambda _p: None)
    assert outcome.status is Status.COMPLETED
    (shown,) = seen
    assert shown.startswith("TaskContext(id='t-1'") and "payload={'me': ...}" in shown


def test_the_result_limit_counts_the_bytes_of_compact_utf8_json() -> None:
    """64 KiB as written, not as escaped: an accented letter is two bytes, not six."""
    registry = Registry()
    registry.register("accents", lambda ctx: {"text": "é" * ctx.payload["n"]})
    fits = Running(CLAIM._replace(type="accents", payload={"n": 30_000}))  # 60,011 bytes
    assert call_handler(registry, fits, lambda _p: None).status is Status.COMPLETED
    over = Running(CLAIM._replace(type="accents", payload={"n": 33_000}))  # 66,011 bytes
    outcome = call_handler(registry, over, lambda _p: None)
    assert outcome.status is Status.FAILED
    assert outcome.error == "The handler's result is 66011 bytes; the limit is 65536."
