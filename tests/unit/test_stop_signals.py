"""The stop signals' handlers: they only note a signal, so they can never block."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

from app.runtime.shutdown import REPEAT_WINDOW_S, GracefulStop

DEADLINE_S = 10.0


class _Scheduler:
    """What GracefulStop drives: `stop` blocks until `hurry`, as a drain with running
    tasks waits out its grace period unless hurried."""

    def __init__(self) -> None:
        self._hurry = threading.Event()
        self._wakeup = threading.Event()
        self.stopped = threading.Event()
        self.running = 0

    def running_count(self) -> int:
        return self.running

    def hurry(self) -> None:
        self._hurry.set()
        self._wakeup.set()

    def stop(self, grace_s: float) -> None:
        self._hurry.wait(grace_s)
        self.stopped.set()


def _until(done: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


def test_a_hurry_arriving_inside_a_handler_that_holds_the_events_locks_never_blocks() -> None:
    """A second SIGINT and the SIGQUIT gunicorn's master sends for it arrive together: the
    second handler runs inside the first, wherever the first was, even holding the lock of
    an event it was setting. It must neither wait for that lock nor lose the hurry."""
    scheduler = _Scheduler()
    stop = GracefulStop(scheduler, grace_s=60.0)  # type: ignore[arg-type]
    stop._on_interrupt(signal.SIGINT, None)  # the first Ctrl-C: a graceful stop
    stop._first_at -= REPEAT_WINDOW_S  # the second comes a second or more later
    handled = threading.Event()

    def interrupted_main_thread() -> None:
        # Every lock a handler could once have been interrupted holding.
        locks = (stop.requested._cond, scheduler._hurry._cond, scheduler._wakeup._cond)
        with ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            stop._on_interrupt(signal.SIGINT, None)
            stop._on_quit(signal.SIGQUIT, None)
            handled.set()

    main = threading.Thread(target=interrupted_main_thread, daemon=True)
    main.start()
    main.join(DEADLINE_S)
    assert handled.is_set(), "a handler blocked on a lock its own thread holds"
    stop.start()
    _until(scheduler.stopped.is_set)  # hurried: not after the 60 s grace period
    assert stop.requested.is_set() and stop.drained.wait(DEADLINE_S)


def test_repeated_copies_of_one_stop_are_one_drain_and_no_hurry() -> None:
    scheduler = _Scheduler()
    stops: list[str] = []
    stop = GracefulStop(scheduler, grace_s=0.05, on_stop=lambda: stops.append("stop"))  # type: ignore[arg-type]
    stop.start()
    stop._on_stop(signal.SIGTERM, None)
    stop._on_interrupt(signal.SIGINT, None)  # copies within REPEAT_WINDOW_S of the first
    stop._on_interrupt(signal.SIGINT, None)
    assert stop.drained.wait(DEADLINE_S)
    assert not scheduler._hurry.is_set()  # drained after its grace period, not hurried
    assert stops == ["stop"]


def test_a_drain_with_tasks_running_says_how_long_it_waits_and_how_to_hurry(
    caplog: Any,
) -> None:
    scheduler = _Scheduler()
    scheduler.running = 2
    stop = GracefulStop(scheduler, grace_s=0.05)  # type: ignore[arg-type]
    stop.start()
    with caplog.at_level("INFO", logger="app.shutdown"):
        stop._on_interrupt(signal.SIGINT, None)
        assert stop.drained.wait(DEADLINE_S)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.shutdown"]
    assert line.startswith("SIGINT: draining: 2 running task(s) get up to 0.05 s")
    assert "a second Ctrl-C a second later, or SIGQUIT, puts them back" in line
