"""Upkeep beside the scheduler loop: heartbeats, recovery of dead instances, pruning.

Each job is a small object with `run_once(now)`, run on a thread of its own by `Periodic`
in production and called directly by tests. None waits for another: a long prune cannot
delay a heartbeat, so a live instance is never declared dead because it was cleaning up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from app.runtime import identity
from app.runtime.metrics import Metrics
from app.storage import dbfaults
from app.storage.retention import prune
from app.storage.store import Store

if TYPE_CHECKING:
    from app.runtime.scheduler import Scheduler

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.maintenance")

# How often finished tasks older than RETENTION_DAYS are pruned.
RETENTION_EVERY_S = 3600.0


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


class Contact:
    """Whether this instance has been in touch with the database long enough to judge.

    Another instance's silence proves its death only if it could have spoken. While the
    database is down (restarting, unreachable, out of connections) every heartbeat fails,
    the live ones included: the silence is everyone's. So an instance takes another's
    silence for a death only once its own heartbeats have gone through, without a failure
    and without a gap (this process paused), for a whole lease, counted from its start:
    a process started as the database came back has seen no one's heartbeats yet. (An
    instance of this host whose process has exited needs no such wait.)
    """

    def __init__(self, clock: Callable[[], float], lease_s: float) -> None:
        self.clock = clock
        self.lease_s = lease_s
        # Heartbeats come every lease/3: a gap of two periods means this process stalled
        # (or was paused), not that one heartbeat was slow.
        self.gap_s = 2 * lease_s / 3
        self._since: float | None = None
        self._last_ok = clock()

    def reached(self) -> None:
        """Note a write that went through (a heartbeat, a registration)."""
        now = self.clock()
        if self._since is None or now - self._last_ok > self.gap_s:
            self._since = now  # back after a failure, or after a pause of this process
        self._last_ok = now

    def lost(self) -> None:
        """Note a heartbeat (or registration) the database did not take."""
        self._since = None

    def trusted(self) -> bool:
        """Tell whether this instance may take another's silence for a death."""
        now = self.clock()
        if self._since is None or now - self._last_ok > self.gap_s:
            return False
        return now - self._since >= self.lease_s


class Heartbeat:
    """Proves the instance alive; tells the scheduler when it was declared dead."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def run_once(self, now: datetime | None = None) -> bool:
        """Heartbeat once; False when the instance's identity is gone (declared dead)."""
        instance = self.scheduler.id
        if instance is None:
            return False
        try:
            alive = self.scheduler.store.heartbeat(instance, now)
        except Exception:
            self.scheduler.contact.lost()
            raise
        if alive:
            self.scheduler.contact.reached()
            self.scheduler.metrics.heartbeat()
        else:
            self.scheduler.declared_dead(instance)
        return alive


class Reaper:
    """Ends the attempts of dead instances, each as an interrupted attempt."""

    def __init__(
        self,
        store: Store,
        lease_s: float,
        host: str,
        me: Callable[[], str | None],
        metrics: Metrics,
        wake: Callable[[], None] | None = None,
        trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.host = host
        self.me = me
        self.metrics = metrics
        # Wakes this instance's loop: what it recovered may be ready now. (Other
        # instances hear of it through the recovery's NOTIFY, on PostgreSQL.)
        self.wake = wake
        # Whether silence may be judged now (see Contact); an exited process always may.
        self.trusted = trusted

    def run_once(self, now: datetime | None = None) -> int:
        """Recover what every dead instance left; return how many attempts were ended."""
        at = now or self.store.database_now()
        stale = at - timedelta(seconds=self.lease_s)
        judge_silence = self.trusted()
        recovered = 0
        for other in self.store.instances():
            death = self._death(other, stale, judge_silence)
            if death is not None:
                reason, fence = death
                reaped = self.store.reap(other.id, reason, now=now, **fence)
                recovered += self._count(reaped, other.id, reason)
        for worker in self.store.orphan_workers():
            if worker == self.me():
                continue  # declared dead a moment ago: the heartbeat will say so
            reason = f"scheduler {worker} is no longer registered"
            recovered += self._count(self.store.reap(worker, reason, now=now), worker, reason)
        if recovered and self.wake is not None:
            self.wake()
        return recovered

    def _count(self, reaped: list[str], worker: str, reason: str) -> int:
        self.metrics.recovered(len(reaped))
        if reaped:
            log.warning("recovered %d task(s) of %s: %s", len(reaped), worker, reason)
        return len(reaped)

    def _death(
        self, other: Any, stale: datetime, judge_silence: bool
    ) -> tuple[str, dict[str, Any]] | None:
        """Say why `other` is dead, and the heartbeat it must still be behind, if it is."""
        if other.id == self.me():
            return None
        silent = f"scheduler {other.id} stopped heartbeating for over {self.lease_s:g} s"
        if other.hostname == self.host:
            if not identity.is_alive(other.pid, other.process_start):
                return f"scheduler {other.id} (pid {other.pid}) exited while running it", {}
            if not judge_silence:
                return None
            if other.heartbeat_monotonic is not None:
                # A live process of this host (this boot): judged on the monotonic clock
                # both share, which no step of the wall clock (NTP, a VM resumed) moves.
                limit = self.store.monotonic() - self.lease_s
                if other.heartbeat_monotonic < limit:
                    return silent, {"stale_monotonic_before": limit}
                return None
        if judge_silence and other.heartbeat_at < stale:
            return silent, {"stale_before": stale}
        return None


class Pruner:
    """Deletes finished tasks older than the retention period, a short chunk at a time."""

    every_s = RETENTION_EVERY_S

    def __init__(self, store: Store, retention_days: int) -> None:
        self.store = store
        self.retention_days = retention_days
        self.stop_event = threading.Event()

    def run_once(self, now: datetime | None = None) -> int:
        """Prune once; return how many tasks went."""
        if self.retention_days <= 0:
            return 0
        older_than = timedelta(days=self.retention_days)
        at = now or self.store.database_now()
        removed = prune(self.store.engine, older_than, now=at, stop=self.stop_event)
        if removed:
            log.info("pruned %d finished task(s) older than %d days", removed, self.retention_days)
        return removed
