"""Signals to graceful stop: SIGTERM/SIGINT drain, SIGQUIT or a later SIGINT hurries."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import FrameType

from app import events
from app.runtime.scheduler import Scheduler
from app.storage import database

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.shutdown")

# A process group is signalled as a whole, so one stop may bring several copies at once.
REPEAT_WINDOW_S = 1.0
# How long a handler told to stop may take to return before it counts as ignoring the stop.
STOPPING_HANDLER_S = 1.0


class GracefulStop:
    """Turns the stop signals into one drain and, if asked, a hurry.

    The rules are in docs/semantics.md#stop-signals.

    A handler runs in the main thread between two of its bytecodes, wherever it is: even
    inside `Event.set()` holding the event's lock, or inside another handler, as when a
    second SIGINT and the SIGQUIT gunicorn's master sends for it arrive together. So a
    handler only notes the signal in plain attributes and writes a byte to a pipe, which
    takes no lock and never blocks; a watcher thread, woken by the byte, logs the signal
    and acts on it. The drain runs in a thread of its own as soon as a stop is requested,
    so the scheduler stops claiming at once, whatever the main thread is busy with.
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
        self._finishing = False
        # Written by the handlers only: the first stop signal and when it came, and the
        # signal that asked to hurry.
        self._stop_signal: int | None = None
        self._first_at = 0.0
        self._hurry_signal: int | None = None
        # What wakes the watcher. Both ends stay open for the life of the process: a
        # handler may still write after the drain, and a closed number could be reused.
        self._bell_read, self._bell = os.pipe()
        os.set_blocking(self._bell, False)

    def install(self) -> None:
        """Handle SIGTERM, SIGINT and SIGQUIT in this (the main) thread."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def signalled(self) -> bool:
        """Tell whether a stop signal has come since `install`."""
        return self._stop_signal is not None or self._hurry_signal is not None

    def start(self) -> None:
        """Drain as soon as a stop is requested; call once the scheduler has started."""
        threading.Thread(target=self._watch, name="stop-signals", daemon=True).start()
        threading.Thread(target=self._drain, name="graceful-stop", daemon=True).start()

    def _drain(self) -> None:
        while not self.requested.wait(0.1) and not self._finishing:
            pass
        try:
            self.scheduler.stop(self.grace_s)
        finally:
            self.drained.set()
            self._ring()  # the watcher's turn to end

    def _watch(self) -> None:
        """Log and act on the signals the handlers noted, until the drain is over."""
        stopping = hurrying = False
        while not self.drained.is_set():
            os.read(self._bell_read, 64)
            if not stopping and self._stop_signal is not None:
                stopping = True
                self._log_drain(signal.Signals(self._stop_signal).name)
                self._request()
            if not hurrying and self._hurry_signal is not None:
                hurrying = True
                name = signal.Signals(self._hurry_signal).name
                log.info("%s: stopping without waiting for running tasks", name)
                self.scheduler.hurry()
                self._request()

    def _log_drain(self, name: str) -> None:
        running = self.scheduler.running_count()
        if not running or self.grace_s <= 0 or self._hurry_signal is not None:
            log.info("%s: draining", name)
            return
        hurry = "a second Ctrl-C a second later, or SIGQUIT," if name == "SIGINT" else "SIGQUIT"
        log.info(
            "%s: draining: %d running task(s) get up to %g s (SHUTDOWN_GRACE_S) to finish; "
            "%s puts them back in the queue now",
            name,
            running,
            self.grace_s,
            hurry,
        )

    def _ring(self) -> None:
        with suppress(OSError):  # the pipe is full: the watcher has a ring to read already
            os.write(self._bell, b"\0")

    def note(self, signum: int, frame: FrameType | None) -> None:
        """Note a stop signal, as the handlers `install` sets do (for a caller's own)."""
        if signum == signal.SIGINT:
            self._on_interrupt(signum, frame)
        elif signum == signal.SIGQUIT:
            self._on_quit(signum, frame)
        else:
            self._on_stop(signum, frame)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._first_at = time.monotonic()
            self._stop_signal = signum
        self._ring()

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        stopping = self._stop_signal is not None
        if stopping and time.monotonic() - self._first_at >= REPEAT_WINDOW_S:
            self._on_quit(signum, frame)
        else:
            self._on_stop(signum, frame)

    def _on_quit(self, signum: int, _frame: FrameType | None) -> None:
        if self._hurry_signal is None:
            self._hurry_signal = signum
        self._ring()

    def _request(self) -> None:
        if self._on_stop_requested is not None:
            self._on_stop_requested()
        self.requested.set()

    def wait(self) -> None:
        """Block until a stop was requested and the drain is over (signals still run)."""
        while not self.drained.wait(0.5):
            pass

    def finish(self) -> None:
        """Request a stop if no signal did, and block until the drain is over."""
        self._finishing = True
        self.wait()


def leave_lingering_handlers(scheduler: Scheduler) -> None:
    """After a drain, close the database's connections; exit now if handlers that
    ignored the stop still hold threads.

    Their tasks are already back in the queue (or ended as a user asked), and whatever
    they return would be discarded; but Python waits for every pool thread at exit, so
    the process would outlive its stop by as long as they run. Exit 0 without them.
    """
    # A handler asked to stop a moment ago may simply not have returned yet.
    lingering = scheduler.wait_for_handlers(STOPPING_HANDLER_S)
    database.close(scheduler.store.engine)  # on SQLite, the file alone holds every commit
    if not lingering:
        ignore_late_stops()
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


def ignore_late_stops() -> None:
    """The drain is over and the process exits: ignore the stop signals from now on.

    Python's teardown puts back the default action of every signal that has a handler
    of Python's, so a stop signal in the last fraction of a second killed the process
    with that signal's status (143, 130, or 131 and a core dump) though nothing was
    lost. Ignored, they leave the exit status 0; SIGKILL still ends a stuck exit.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
