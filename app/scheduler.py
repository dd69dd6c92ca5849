"""The scheduler: a background loop that claims ready tasks and runs them in a pool."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from . import process
from .attempt import Running, call_handler
from .database import utcnow
from .handlers import Registry
from .models import Status
from .notify import Listener
from .store import Claim, NotRegistered, Outcome, Store

log = logging.getLogger(__name__)

# How often a scheduler with running tasks looks for cancel requests made elsewhere.
CANCEL_CHECK_S = 0.5
# How often finished tasks older than RETENTION_DAYS are pruned.
RETENTION_EVERY_S = 3600.0


class Scheduler:
    """Claims ready tasks atomically and runs at most `max_concurrent` of them at once."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        max_concurrent: int,
        poll_interval_s: float,
        lease_s: float,
        retention_days: int = 0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.retention_days = retention_days
        self.clock = clock
        self.id: str | None = None
        self.state = "stopped"
        self.last_tick: float | None = None
        self.host = process.host_key()
        self._running: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_maintenance = 0.0
        self._next_heartbeat = 0.0
        self._listener: Listener | None = None
        self._next_cancel_check = 0.0
        self._next_prune = 0.0
        self._next_due: float | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Register this instance, recover what dead instances left, and start the loop."""
        if self._thread is not None:
            return
        self._join()
        self.maintain()
        self._executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="task")
        if self.store.engine.dialect.name == "postgresql":
            self._listener = Listener(self.store.engine, self.wake)
            self._listener.start()
        self.state = "running"
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        log.info("scheduler %s started: %d slots", self.id, self.max_concurrent)

    def wake(self) -> None:
        """Ask the loop for a pass now: a task was submitted or finished."""
        self._wakeup.set()

    def hurry(self) -> None:
        """Skip what is left of the shutdown grace period."""
        self._hurry.set()

    def stop(self, grace_s: float) -> None:
        """Stop claiming, let running tasks finish for `grace_s`, then requeue the rest."""
        if self._thread is None or self.state != "running":
            return
        assert self.id is not None and self._executor is not None
        self.state = "draining"
        self._stopping.set()
        self._wakeup.set()
        self._thread.join()
        if self._listener is not None:
            self._listener.stop()
        self._safely(self.store.set_state, self.id, "draining")
        self._wait_for_running(time.monotonic() + grace_s)
        with self._lock:
            leftover = list(self._running.values())
        # Requeue before cancelling: a cancelled handler's own failure must find the row
        # already back in QUEUED, so its late write is refused.
        for running in leftover:
            if self._safely(self.store.requeue, running.claim):
                log.info("task %s requeued at shutdown", running.claim.id)
            running.stop("shutdown")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._safely(self.store.deregister, self.id)
        self.state = "stopped"
        log.info("scheduler %s stopped", self.id)

    def _wait_for_running(self, deadline: float) -> None:
        while not self._hurry.is_set():
            with self._lock:
                futures = [r.future for r in self._running.values() if r.future is not None]
            remaining = deadline - time.monotonic()
            if not futures or remaining <= 0:
                return
            wait(futures, timeout=min(remaining, 0.1), return_when=FIRST_COMPLETED)

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                self._pass()
                self.last_tick = time.monotonic()
            except SQLAlchemyError:
                log.exception("scheduler pass failed; retrying after the polling interval")
            self._wakeup.wait(self._sleep_for())

    def _pass(self) -> None:
        now = time.monotonic()
        if now >= self._next_maintenance:
            self.maintain()
        if now >= self._next_prune:
            self._prune()
        self._expire_timeouts()
        if self.running_count() and now >= self._next_cancel_check:
            self._next_cancel_check = now + CANCEL_CHECK_S
            self._honour_cancel_requests()
        # Asked with the time from before the claim: a task that fell due during the claim
        # is still found, and the loop comes straight back for it.
        before = self.clock()
        self.tick()
        due = self.store.next_run_at(before)
        self._next_due = None if due is None else now + (due - before).total_seconds() + 0.001

    def _sleep_for(self) -> float:
        """Sleep until the polling interval, the next timeout, or the next due task."""
        moments = [time.monotonic() + self.poll_interval_s]
        with self._lock:
            moments += [r.deadline for r in self._running.values() if r.deadline is not None]
            if self._running:
                moments.append(self._next_cancel_check)
        if self._next_due is not None:
            moments.append(self._next_due)
        return max(0.0, min(moments) - time.monotonic())

    def tick(self) -> int:
        """Claim as many ready tasks as there are free slots and start them."""
        assert self.id is not None and self._executor is not None
        with self._lock:
            free = self.max_concurrent - len(self._running)
        try:
            claims = self.store.claim(self.id, free)
        except NotRegistered:
            self._rejoin()
            return 0
        started = time.monotonic()
        for claim in claims:
            running = Running(claim)
            if claim.timeout_ms is not None:
                running.deadline = started + claim.timeout_ms / 1000
            with self._lock:
                self._running[claim.id] = running
            running.future = self._executor.submit(self._execute, running)
        return len(claims)

    def _join(self) -> None:
        """Register under a new identity: at start, or after being declared dead."""
        self.id = f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        now = self.store.database_now()
        self.store.register(
            {
                "id": self.id,
                "hostname": self.host,
                "pid": os.getpid(),
                "process_start": process.start_time(os.getpid()),
                "started_at": now,
                "heartbeat_at": now,
                "state": "running",
            }
        )
        self._next_heartbeat = time.monotonic() + self.lease_s / 3

    def _rejoin(self) -> None:
        # The attempts still running under the old identity were ended by whoever
        # declared us dead; their late writes will be refused.
        log.error("scheduler %s was declared dead; rejoining under a new identity", self.id)
        self._join()
        log.info("scheduler rejoined as %s", self.id)

    def maintain(self) -> None:
        """Heartbeat when due, and end the attempts of instances that are dead."""
        assert self.id is not None
        now = time.monotonic()
        self._next_maintenance = now + max(0.2, min(self.poll_interval_s, self.lease_s / 3))
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.lease_s / 3
            if not self.store.heartbeat(self.id):
                self._rejoin()
        stale = self.store.database_now() - timedelta(seconds=self.lease_s)
        for other in self.store.instances():
            death = self._death(other, stale)
            if death is not None:
                reason, stale_before = death
                reaped = self.store.reap(other.id, reason, stale_before=stale_before)
                log.warning("recovered %d task(s) of %s: %s", len(reaped), other.id, reason)
        for worker in self.store.orphan_workers():
            reaped = self.store.reap(worker, f"scheduler {worker} is no longer registered")
            log.warning("recovered %d task(s) of unregistered %s", len(reaped), worker)

    def _death(self, other: Any, stale: datetime) -> tuple[str, datetime | None] | None:
        """Say why `other` is dead, and the heartbeat it must still be behind, if it is."""
        if other.id == self.id:
            return None
        if other.hostname == self.host and not process.is_alive(other.pid, other.process_start):
            return f"scheduler {other.id} (pid {other.pid}) exited while running it", None
        if other.heartbeat_at < stale:
            reason = f"scheduler {other.id} stopped heartbeating for over {self.lease_s:g} s"
            return reason, stale
        return None

    # -- one attempt --------------------------------------------------------------

    def _execute(self, running: Running) -> None:
        claim = running.claim
        try:
            outcome = call_handler(self.registry, running, partial(self._progress, claim))
            if running.stop_reason != "timeout":  # a timeout was recorded when it struck
                self._record(claim, outcome)
        finally:
            with self._lock:
                self._running.pop(claim.id, None)
            self._wakeup.set()

    def _record(self, claim: Claim, outcome: Outcome) -> None:
        """Write the outcome, retrying while the database is unreachable."""
        delay = 0.05
        while True:
            try:
                if not self.store.finish(claim, outcome):
                    log.info("late write for task %s attempt %d refused", claim.id, claim.attempt)
                return
            except SQLAlchemyError:
                log.exception("could not record task %s; retrying", claim.id)
            if self._hurry.wait(delay):
                return  # left RUNNING: the next start recovers it as interrupted
            delay = min(delay * 2, 5.0)

    def _progress(self, claim: Claim, percent: int) -> None:
        try:
            self.store.report_progress(claim, percent)
        except SQLAlchemyError:
            log.warning("could not record the progress of task %s", claim.id)

    def cancel_running(self, task_id: str) -> bool:
        """Ask the handler of `task_id` to stop, if this instance runs it."""
        with self._lock:
            running = self._running.get(task_id)
        if running is None:
            return False
        running.stop("cancel")
        return True

    def _honour_cancel_requests(self) -> None:
        assert self.id is not None
        for task_id, attempt in self.store.cancel_requests(self.id):
            with self._lock:
                running = self._running.get(task_id)
            if running is not None and running.claim.attempt == attempt:
                running.stop("cancel")

    def _expire_timeouts(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [
                r
                for r in self._running.values()
                if r.deadline is not None and r.deadline <= now and r.stop_reason is None
            ]
        for running in expired:
            running.stop("timeout")
            limit = running.claim.timeout_ms
            outcome = Outcome(
                Status.FAILED,
                error=f"The attempt exceeded its timeout of {limit} ms.",
                error_code="timeout",
            )
            # The slot stays taken until the handler's thread returns.
            self._record(running.claim, outcome)

    def _prune(self) -> None:
        self._next_prune = time.monotonic() + RETENTION_EVERY_S
        if self.retention_days <= 0:
            return
        from .retention import prune

        removed = prune(self.store.engine, timedelta(days=self.retention_days))
        if removed:
            log.info("pruned %d finished task(s) older than %d days", removed, self.retention_days)

    def _safely(self, action: Callable[..., Any], *args: Any) -> Any:
        try:
            return action(*args)
        except SQLAlchemyError:
            log.exception("%s failed during shutdown", getattr(action, "__name__", action))
            return None

    # -- for /health ----------------------------------------------------------------

    def running_count(self) -> int:
        """Return how many attempts this instance is executing now."""
        with self._lock:
            return len(self._running)

    def healthy(self) -> bool:
        """Tell whether the loop has ticked within two polling intervals."""
        if self.state == "draining":
            return True
        if self.state != "running" or self.last_tick is None:
            return False
        return time.monotonic() - self.last_tick <= max(2 * self.poll_interval_s, 1.0)
