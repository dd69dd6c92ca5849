"""Signals to graceful stop: SIGTERM/SIGINT drain, SIGQUIT or a later SIGINT hurries."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from app import events
from app.runtime.scheduler import Scheduler

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.shutdown")

# A process group is signalled as a whole, so one stop may bring several copies at once.
REPEAT_WINDOW_S = 1.0
# How long a handler told to stop may take to return before it counts as ignoring the stop.
STOPPING_HANDLER_S = 1.0


class GracefulStop:
    """Turns the stop signals into one drain and, if asked, a hurry.

    The rules are in docs/semantics.md#stop-signals.

    The drain runs in its own thread as soon as a stop is requested, so the scheduler stops
    claiming at once, whatever the main thread is busy with (gunicorn's loop notices a
    signal only within a second). The handlers only set flags: they never block.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        grace_s: float,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.grace_s = grace_s
        self.requested = threading.Event()
        self.drained = threading.Event()
        self._on_stop_requested = on_stop
        self._first_at = 0.0
        self._finishing = False

    def install(self) -> None:
        """Handle SIGTERM, SIGINT and SIGQUIT in this (the main) thread."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def start(self) -> None:
        """Drain as soon as a stop is requested; call once the scheduler has started."""
        threading.Thread(target=self._drain, name="graceful-stop", daemon=True).start()

    def _drain(self) -> None:
        while not self.requested.wait(0.1) and not self._finishing:
            pass
        try:
            self.scheduler.stop(self.grace_s)
        finally:
            self.drained.set()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.requested.is_set():
            log.info("%s: draining", signal.Signals(signum).name)
            self._first_at = time.monotonic()
            self._request()

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set() and time.monotonic() - self._first_at >= REPEAT_WINDOW_S:
            self._on_quit(signum, frame)
        else:
            self._on_stop(signum, frame)

    def _on_quit(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping without waiting for running tasks", signal.Signals(signum).name)
        self.scheduler.hurry()
        self._request()

    def _request(self) -> None:
        self.requested.set()
        if self._on_stop_requested is not None:
            self._on_stop_requested()

    def wait(self) -> None:
        """Block until a stop was requested and the drain is over (signals still run)."""
        while not self.drained.wait(0.5):
            pass

    def finish(self) -> None:
        """Request a stop if no signal did, and block until the drain is over."""
        # A plain flag: a handler interrupting `requested.set()` here, in the main thread,
        # would wait forever for the lock this thread holds.
        self._finishing = True
        self.wait()


def leave_lingering_handlers(scheduler: Scheduler) -> None:
    """After a drain, exit now if handlers that ignored the stop still hold threads.

    Their tasks are already back in the queue (or ended as a user asked), and whatever
    they return would be discarded; but Python waits for every pool thread at exit, so
    the process would outlive its stop by as long as they run. Exit 0 without them.
    """
    # A handler asked to stop a moment ago may simply not have returned yet.
    lingering = scheduler.wait_for_handlers(STOPPING_HANDLER_S)
    if not lingering:
        return
    log.warning(
        "%d handler(s) ignored the stop and still run; exiting without them "
        "(their tasks are back in the queue)",
        lingering,
    )
    events.of(scheduler.store.engine).flush()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
