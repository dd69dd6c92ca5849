"""Signals to graceful stop: SIGTERM/SIGINT drain, SIGQUIT or a later SIGINT hurries."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from .scheduler import Scheduler

log = logging.getLogger(__name__)

# A process group is signalled as a whole, so one stop may bring several copies at once.
REPEAT_WINDOW_S = 1.0


class GracefulStop:
    """Turns the signals of SPEC section 7 into one drain and, if asked, a hurry."""

    def __init__(self, scheduler: Scheduler, on_stop: Callable[[], None] | None = None) -> None:
        self.scheduler = scheduler
        self.requested = threading.Event()
        self._on_stop_requested = on_stop
        self._first_at = 0.0

    def install(self) -> None:
        """Handle SIGTERM, SIGINT and SIGQUIT in this (the main) thread."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGQUIT, self._on_quit)

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
        """Block until a stop is requested (signals still run meanwhile)."""
        while not self.requested.wait(0.5):
            pass
