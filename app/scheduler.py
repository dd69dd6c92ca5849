"""The scheduler: a background loop that claims ready tasks and runs them in a pool."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from . import process
from .attempt import Running, call_handler
from .handlers import Registry
from .maintenance import Upkeep
from .metrics import Metrics
from .models import Status
from .notify import Listener
from .store import Claim, Cycle, NotRegistered, Outcome, Store

log = logging.getLogger(__name__)

# How often a scheduler with running tasks looks for cancel requests made elsewhere.
CANCEL_CHECK_S = 0.5


class Scheduler(Upkeep):
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
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.retention_days = retention_days
        self.metrics = metrics or Metrics()
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
        # Attempts that ended, waiting for the loop to record them with its next claim.
        self._done: list[tuple[Running, Outcome | None]] = []
        self._direct = False
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
        self._record_directly()
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

    def _record_directly(self) -> None:
        """From now on attempts record themselves; record what the loop left behind."""
        with self._lock:
            self._direct = True
            done, self._done = self._done, []
        for running, outcome in done:
            if outcome is not None:
                self._record(running, outcome)
            with self._lock:
                self._running.pop(running.claim.id, None)

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
        self.tick()

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
        """Record finished attempts, then claim as many ready tasks as slots are free.

        Both in one transaction; the slots of recorded attempts are free once it commits.
        """
        assert self.id is not None and self._executor is not None
        with self._lock:
            done, self._done = self._done, []
            free = self.max_concurrent - len(self._running) + len(done)
        finished = [(r.claim, o) for r, o in done if o is not None]
        limit = 0 if self._stopping.is_set() else free
        began = time.monotonic()
        try:
            cycle: Cycle | None = self.store.cycle(self.id, finished, limit)
        except NotRegistered:
            cycle = None  # its outcomes are refused anyway: whoever reaped it ended them
            self._rejoin()
        except BaseException:
            with self._lock:
                self._done[:0] = done  # not recorded: try again on the next pass
            raise
        applied = cycle.applied if cycle else [False] * len(finished)
        claims = cycle.claims if cycle else []
        self.metrics.finished(done, applied)
        for (claim, _), ok in zip(finished, applied, strict=True):
            if not ok:
                log.info("late write for task %s attempt %d refused", claim.id, claim.attempt)
        with self._lock:
            for running, _ in done:
                self._running.pop(running.claim.id, None)
        self._dispatch(claims)
        self.metrics.claimed(claims)
        # While every slot is taken, a finishing task wakes the loop; otherwise sleep no
        # longer than until the next held-back task falls due.
        if cycle is None or cycle.next_due is None:
            self._next_due = None
        else:
            self._next_due = began + (cycle.next_due - cycle.now).total_seconds()
        return len(claims)

    def _dispatch(self, claims: list[Claim]) -> None:
        assert self._executor is not None
        started = time.monotonic()
        for claim in claims:
            running = Running(claim)
            if claim.timeout_ms is not None:
                running.deadline = started + claim.timeout_ms / 1000
            with self._lock:
                self._running[claim.id] = running
            running.future = self._executor.submit(self._execute, running)

    def _execute(self, running: Running) -> None:
        claim = running.claim
        outcome: Outcome | None = None
        try:
            outcome = call_handler(self.registry, running, partial(self._progress, claim))
            if running.cut_off:
                outcome = None  # recorded when the timeout struck; only the slot is left
        finally:
            with self._lock:
                direct = self._direct
                if not direct:
                    # The loop records it with the next claim, in one commit.
                    self._done.append((running, outcome))
            if direct:
                if outcome is not None:
                    self._record(running, outcome)
                with self._lock:
                    self._running.pop(claim.id, None)
            self._wakeup.set()

    def _record(self, running: Running, outcome: Outcome) -> None:
        """Write the outcome on its own, retrying while the database is unreachable."""
        claim = running.claim
        delay = 0.05
        while True:
            try:
                applied = self.store.finish(claim, outcome)
                if not applied:
                    log.info("late write for task %s attempt %d refused", claim.id, claim.attempt)
                self.metrics.finished([(running, outcome)], [applied])
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
                if r.deadline is not None
                and r.deadline <= now
                and not r.cut_off
                and r.stop_reason in (None, "cancel")
            ]
        for running in expired:
            limit = running.claim.timeout_ms
            if running.stop_reason == "cancel":
                # Asked to stop and still running at its deadline: it ends as asked.
                error = f"Cancelled by a user; still running at its timeout of {limit} ms."
                outcome = Outcome(Status.CANCELLED, error=error, error_code="cancelled")
            else:
                running.stop("timeout")
                error = f"The attempt exceeded its timeout of {limit} ms."
                outcome = Outcome(Status.FAILED, error=error, error_code="timeout")
            running.cut_off = True
            # The slot stays taken until the handler's thread returns.
            self._record(running, outcome)

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
