"""The scheduler: a background loop that claims ready tasks and runs them in a pool."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from . import process
from .database import utcnow
from .handlers import HandlerFailed, Registry, TaskContext
from .models import Status
from .store import Claim, Outcome, Store

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 64 * 1024


@dataclass
class Running:
    """An attempt this instance is executing."""

    claim: Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None


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
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
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

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Register this instance, recover what dead instances left, and start the loop."""
        if self._thread is not None:
            return
        self.id = f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        now = self.clock()
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
        self.maintain()
        self._executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="task")
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
        self._safely(self.store.set_state, self.id, "draining")
        self._wait_for_running(time.monotonic() + grace_s)
        with self._lock:
            leftover = list(self._running.values())
        # Requeue before cancelling: a cancelled handler's own failure must find the row
        # already back in QUEUED, so its late write is refused.
        for running in leftover:
            if self._safely(self.store.requeue, running.claim):
                log.info("task %s requeued at shutdown", running.claim.id)
            running.cancel.set()
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
                if time.monotonic() >= self._next_maintenance:
                    self.maintain()
                self.tick()
                self.last_tick = time.monotonic()
            except SQLAlchemyError:
                log.exception("scheduler pass failed; retrying after the polling interval")
            self._wakeup.wait(self.poll_interval_s)

    def tick(self) -> int:
        """Claim as many ready tasks as there are free slots and start them."""
        assert self.id is not None and self._executor is not None
        with self._lock:
            free = self.max_concurrent - len(self._running)
        claims = self.store.claim(self.id, free)
        for claim in claims:
            running = Running(claim)
            with self._lock:
                self._running[claim.id] = running
            running.future = self._executor.submit(self._execute, running)
        return len(claims)

    def maintain(self) -> None:
        """Heartbeat, and end the attempts of instances that are dead."""
        assert self.id is not None
        now = self.clock()
        self._next_maintenance = time.monotonic() + min(self.lease_s / 3, 5.0)
        if not self.store.heartbeat(self.id, now):
            log.error("scheduler %s was declared dead; its late writes will be refused", self.id)
        stale = now - timedelta(seconds=self.lease_s)
        for other in self.store.instances():
            reason = self._death(other, stale)
            if reason:
                reaped = self.store.reap(other.id, reason)
                log.warning("recovered %d task(s) of %s: %s", len(reaped), other.id, reason)
        for worker in self.store.orphan_workers():
            reaped = self.store.reap(worker, f"scheduler {worker} is no longer registered")
            log.warning("recovered %d task(s) of unregistered %s", len(reaped), worker)

    def _death(self, other: Any, stale: datetime) -> str | None:
        if other.id == self.id:
            return None
        if other.hostname == self.host and not process.is_alive(other.pid, other.process_start):
            return f"scheduler {other.id} (pid {other.pid}) exited while running it"
        if other.heartbeat_at < stale:
            return f"scheduler {other.id} stopped heartbeating for over {self.lease_s:g} s"
        return None

    # -- one attempt --------------------------------------------------------------

    def _execute(self, running: Running) -> None:
        claim = running.claim
        try:
            outcome = self._call_handler(running)
            self._record(claim, outcome)
        finally:
            with self._lock:
                self._running.pop(claim.id, None)
            self._wakeup.set()

    def _call_handler(self, running: Running) -> Outcome:
        claim = running.claim
        payload = claim.payload if isinstance(claim.payload, dict) else {}
        ctx = TaskContext(
            claim.id, claim.type, claim.duration_ms, payload, claim.attempt, running.cancel
        )
        try:
            result = self.registry.resolve(claim.type)(ctx)
        except HandlerFailed as exc:
            return Outcome(Status.FAILED, error=str(exc), error_code="handler_error")
        except Exception as exc:  # a handler's bug must fail its task, not the scheduler
            log.exception("handler for task %s raised", claim.id)
            message = f"The handler raised {type(exc).__name__}: {exc}"
            return Outcome(Status.FAILED, error=message[:1000], error_code="handler_error")
        try:
            size = len(json.dumps(result).encode())
        except (TypeError, ValueError):
            return Outcome(
                Status.FAILED,
                error="The handler returned a value that is not JSON.",
                error_code="handler_error",
            )
        if size > MAX_RESULT_BYTES:
            message = f"The handler's result is {size} bytes; the limit is {MAX_RESULT_BYTES}."
            return Outcome(Status.FAILED, error=message, error_code="handler_error")
        return Outcome(Status.COMPLETED, result=result)

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
