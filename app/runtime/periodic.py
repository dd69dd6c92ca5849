"""Maintenance beside the scheduler loop: each job on a thread of its own.

Each job (heartbeat, reaper, pruner, count folder) is a small object with `run_once(now)`,
run every so often by `Periodic` in production and called directly by tests. None waits for
another: a long prune cannot delay a heartbeat, so a live instance is never declared dead
because it was cleaning up.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, Protocol

from app.storage import dbfaults

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.maintenance")


class MaintenanceJob(Protocol):
    """A maintenance job: one run per call."""

    def run_once(self, now: datetime | None = None) -> Any:
        """Do the job once, at `now` (None: the database's time)."""


class Periodic:
    """Runs a job on its own thread every `interval_s` seconds until halted."""

    def __init__(
        self,
        job: MaintenanceJob,
        interval_s: float,
        stop: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.job = job
        self.interval_s = interval_s
        # How soon to try again after a failed run (the interval, unless told otherwise).
        self.retry_s = interval_s if retry_s is None else retry_s
        self._stop = stop or threading.Event()
        name = type(job).__name__.lower()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread; the first run is at once."""
        self._thread.start()

    def halt(self, wait: bool = True) -> None:
        """Stop after the current run (a prune stops between two chunks)."""
        self._stop.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval_s
            try:
                self.job.run_once()
            except Exception as exc:
                wait = self.retry_s
                fault = dbfaults.classify(exc)
                if fault is None:
                    log.exception("%s failed; trying again", type(self.job).__name__)
                else:  # an outage, not a bug: one line each time, no traceback
                    log.warning(
                        "%s failed: %s; trying again", type(self.job).__name__, fault.problem
                    )
            self._stop.wait(wait)
