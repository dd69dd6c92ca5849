"""The scheduler: a loop that claims ready tasks and runs them on a capped set of threads.

One pass (`run_once`) writes the outcomes of the attempts that ended and claims as many
ready tasks as threads are free, in one transaction, then starts them. The database holds
everything the scheduler needs, except what only this process can know: which attempts its
threads are executing (`_attempts`, keyed by task and attempt number). Heartbeats,
recovery of dead instances, pruning and (on PostgreSQL) folding the task counts run beside
the loop, each on its own thread (`periodic`: heartbeat, reaper, pruner, count folder), so
none of them can stall the others.

Tests drive it without threads: `open()` registers the instance, each `run_once(now)` is
one pass at the given time, the executor and the clock are injected.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from app import events, faults
from app.handlers import SIMULATE, Registry
from app.runtime import identity
from app.runtime.attempt import Executor, Running, ThreadExecutor, call_handler
from app.runtime.countfold import CountFolder
from app.runtime.firer import FIRE_EVERY_S, Firer
from app.runtime.heartbeat import Contact, Heartbeat
from app.runtime.metrics import Metrics
from app.runtime.periodic import Periodic
from app.runtime.pruner import EventPruner, Pruner
from app.runtime.reaper import Reaper
from app.statuses import Status
from app.storage import dbfaults, wakeups
from app.storage.notify import Listener
from app.storage.store import Claim, NotRegistered, Outcome, PassResult, Store

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.scheduler")
T = TypeVar("T")

# How often a scheduler with running tasks looks for cancel requests made elsewhere.
CANCEL_CHECK_S = 0.5
# The first wait after a failed pass; it doubles up to the polling interval.
FAILED_PASS_BACKOFF_S = 0.05
# The longest wait between two tries to register while the database is unavailable.
REGISTER_RETRY_MAX_S = 2.0
# Tries of each write a drain makes (0.1 s, then twice as long each time): about 3 s.
SHUTDOWN_WRITE_TRIES = 5
# The longest the timeouts' thread sleeps with no deadline due: it sees a stop within it.
WATCH_TIMEOUTS_S = 1.0
LOST = "back in the queue: its claim committed but was never acknowledged; it did not start"


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
        event_retention_s: float = 3600.0,
        metrics: Metrics | None = None,
        executor: Callable[[int], Executor] = ThreadExecutor,
        clock: Callable[[], float] = time.monotonic,
        name: Callable[[], str] | None = None,
        fire: Callable[[datetime | None], Any] | None = None,
        queues: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.id: str | None = None
        # Why the instance is not registered yet (the database is unavailable), if so.
        self.unregistered_because: str | None = None
        # The types this instance claims (those it has handlers for); empty: every type.
        self.types: list[str] = []
        # The queues this instance claims from; empty: every queue.
        self.queues: list[str] = list(queues)
        self.state = "stopped"
        self.last_tick: float | None = None
        self.host = identity.host_key()
        self.contact = Contact(clock, lease_s)
        self.heartbeat = Heartbeat(
            store, self.contact, self.metrics, lambda: self.id, self.declared_dead
        )
        self.reaper = Reaper(
            store,
            lease_s,
            self.host,
            lambda: self.id,
            self.metrics,
            wake=self.wake,
            in_touch=self.contact.in_touch_s,
            lost=self.contact.lost,
            beat=self.heartbeat.run_once,
            every_s=max(0.2, min(self.poll_interval_s, self.lease_s / 3)),
            clock=clock,
        )
        self.pruner = Pruner(store, retention_days)
        self.event_pruner = EventPruner(store, event_retention_s)
        self.folder = CountFolder(store)
        # Fires due schedules (services/schedules.fire_due, given by the app).
        self.firer = None if fire is None else Firer(fire, self.metrics, self.wake)
        self._new_executor = executor
        self._executor: Executor | None = None
        self._name = name or _instance_name
        self._attempts: dict[tuple[str, int], Running] = {}
        self._lock = threading.Condition()
        self._wakeup = threading.Event()
        self._halt = threading.Event()
        self._hurry = threading.Event()
        self._draining = False
        # A pass is under way: what it claims is not yet among the attempts.
        self._passing = False
        self._declared_dead: str | None = None
        self._rejoining = False  # declared dead, and not registered again yet
        self._uncertain = False  # a pass failed: its commit may have happened unseen
        self._next_reconcile = 0.0
        self._next_cancel_check = 0.0
        self._next_due: float | None = None
        self._thread: threading.Thread | None = None
        self._timeouts: threading.Thread | None = None
        self._deadlines_changed = threading.Event()
        self._jobs: list[Periodic] = []
        self._listener: Listener | wakeups.Doorbell | None = None
        self._unlistening: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------

    def open(self, now: datetime | None = None) -> None:
        """Register a new identity and recover what dead instances left, without threads."""
        self._join(now)
        self.contact.reached()
        self.reaper.run_once(now)
        self._executor = self._new_executor(self.max_concurrent)
        self.state = "running"

    def start(self) -> None:
        """Open, then run the loop and the maintenance jobs on threads of their own.

        A database that cannot be reached (down, restarting) does not stop the start: the
        instance keeps trying to register in the background, reports why on /health, and
        starts working as soon as it has registered.
        """
        if self._thread is not None:
            return
        try:
            self.open()
        except Exception as exc:
            fault = dbfaults.classify(exc)
            if fault is None:
                raise
            self._not_registered(fault.problem)
            self._thread = threading.Thread(
                target=self._open_then_loop, name="scheduler", daemon=True
            )
            self._thread.start()
            return
        # Known before the maintenance threads start: one of them may already be running
        # when a stop comes, and the stop must find a loop to stop.
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._started()
        self._thread.start()

    def _not_registered(self, problem: str) -> None:
        self.state = "starting"
        self.unregistered_because = problem
        self.contact.lost()  # in touch only from the registration on
        log.warning("scheduler cannot register: %s; trying again", problem)

    def _open_then_loop(self) -> None:
        delay = FAILED_PASS_BACKOFF_S
        while not self._halt.wait(delay):
            try:
                self.open()
            except Exception as exc:
                fault = dbfaults.classify(exc)
                if fault is None:
                    log.exception("scheduler failed to register; trying again")
                else:
                    self._not_registered(fault.problem)
                delay = min(delay * 2, REGISTER_RETRY_MAX_S)
                continue
            self._started()
            self._loop()
            return

    def _started(self) -> None:
        """Registered: start listening for notifications and the maintenance threads."""
        self.unregistered_because = None
        if self.store.shared_clock:
            self._listener = Listener(self.store.engine, lambda _payload: self.wake())
            self._listener.start()
        elif (bell := wakeups.bell(self.store.engine)) is not None:
            # Work other processes made ready: their submissions, their completions.
            self._listener = bell.listen(wakeups.READY, lambda _payload: self.wake())
            self._listener.start()
        self._jobs = [
            # After a failure, beat again within a second: back in touch at once.
            Periodic(self.heartbeat, self.lease_s / 3, retry_s=min(1.0, self.lease_s / 3)),
            Periodic(self.reaper, self.reaper.every_s),
            Periodic(self.pruner, self.pruner.every_s, stop=self.pruner.stop_event),
            Periodic(
                self.event_pruner, self.event_pruner.every_s, stop=self.event_pruner.stop_event
            ),
        ]
        if self.folder.needed:
            self._jobs.append(Periodic(self.folder, self.folder.every_s))
        if self.firer is not None:
            self._jobs.append(Periodic(self.firer, FIRE_EVERY_S))
        for job in self._jobs:
            job.start()
        self._timeouts = threading.Thread(
            target=self._watch_timeouts, name="scheduler-timeouts", daemon=True
        )
        self._timeouts.start()
        log.info("scheduler %s started: %d slots", self.id, self.max_concurrent)

    def wake(self) -> None:
        """Ask the loop for a pass now: a task was submitted or finished."""
        self._wakeup.set()

    def hurry(self) -> None:
        """Skip what is left of the shutdown grace period."""
        self._hurry.set()
        self.wake()

    def stop(self, grace_s: float) -> None:
        """Stop claiming, let running tasks finish for `grace_s`, then requeue the rest."""
        if self._thread is None or self.state == "stopped":
            return
        if not self._draining:
            self.begin_drain()
        self._await_attempts(grace_s, self._hurry)
        self._halt.set()
        self.wake()
        self._deadlines_changed.set()  # the timeouts' thread sees the halt
        if self._thread.ident is not None:  # else it starts, sees the halt and returns
            self._thread.join()
        if self.id is None:  # it never registered: nothing to write back
            self.state = "stopped"
            return
        self.finish_drain()
        if self._timeouts is not None:  # after the writes: it has nothing left to end
            self._timeouts.join(2 * WATCH_TIMEOUTS_S)
        for job in self._jobs:
            job.halt()
        # The state changes of the drain are logged before the line that ends it.
        events.of(self.store.engine).flush()
        log.info("scheduler %s stopped", self.id)

    def begin_drain(self) -> None:
        """Stop claiming; running attempts go on and their outcomes are still recorded."""
        self.state = "draining"
        self._draining = True
        for job in self._jobs:
            if job.job is not self.heartbeat:  # heartbeats go on: a drain is not a death
                job.halt(wait=False)
        if self._listener is not None:
            # On a thread: a LISTEN connection takes up to a second to notice, and the
            # grace (or a hurried stop's 2 s under gunicorn) starts now, not after it.
            self._unlistening = threading.Thread(
                target=self._listener.stop, name="listener-stop", daemon=True
            )
            self._unlistening.start()
        if self.id is not None:
            _safely(self.store.set_state, self.id, "draining")
        self.wake()

    def finish_drain(self) -> None:
        """Record what ended, put what still runs back in the queue, and deregister.

        One moment, under the lock, decides each attempt: an outcome in hand by then is
        written; an attempt still running goes back to the queue, its handler is asked to
        stop, and what it returns from then on is discarded. All are written in two
        transactions, so that a handler returning meanwhile is not put back to run again.
        """
        assert self.id is not None
        with self._lock:
            pending = [r for r in self._attempts.values() if not r.settled]
            ended = [(r.claim, r.outcome) for r in pending if r.outcome is not None]
            unfinished = [r for r in pending if r.outcome is None]
            for running in pending:
                running.settled = True
                running.cut_off = running.cut_off or running.outcome is None
        for running in unfinished:
            running.stop("shutdown")
        if ended:
            self._persist(self.store.cycle, self.id, ended, 0)
        if unfinished:
            left = self._persist(self.store.requeue_all, [r.claim for r in unfinished]) or []
            for running, status in zip(unfinished, left, strict=False):
                if status is not None:
                    log.info("task %s %s at shutdown", running.claim.id, _AT_SHUTDOWN[status])
        with self._lock:
            # Only those whose thread still runs hold a slot now.
            self._forget_done()
        if self._unlistening is not None:
            self._unlistening.join(5)
        if self._executor is not None:
            self._executor.shutdown()
        _safely(self.store.deregister, self.id)
        self.state = "stopped"

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> None:
        backoff = FAILED_PASS_BACKOFF_S
        while not self._halt.is_set():
            self._wakeup.clear()
            if self.step():
                backoff = FAILED_PASS_BACKOFF_S
                self._wakeup.wait(self.sleep_for())
                continue
            # A deadline already past must not turn a database outage into a busy loop.
            self._halt.wait(backoff)
            backoff = min(backoff * 2, max(self.poll_interval_s, FAILED_PASS_BACKOFF_S))

    def step(self, now: datetime | None = None) -> bool:
        """Run one pass, logging rather than raising a failure: the next pass tries again."""
        try:
            self.run_once(now)
        except Exception as exc:
            fault = dbfaults.classify(exc)
            if fault is None:
                log.exception("scheduler pass failed; trying again shortly")
            else:  # an outage, not a bug: one line each time, no traceback
                log.warning("scheduler pass failed: %s; trying again shortly", fault.problem)
            return False
        self.last_tick = self.clock()
        return True

    def run_once(self, now: datetime | None = None) -> int:
        """Run one pass at `now` (None: the database's time); return how many tasks started."""
        with self._lock:
            self._passing = True
        try:
            return self._pass(now)
        finally:
            with self._lock:
                self._passing = False
                self._lock.notify_all()

    def _pass(self, now: datetime | None) -> int:
        if self._declared_dead is not None and self._declared_dead == self.id:
            self._rejoin(now)
        clock = self.clock()
        self.expire_timeouts()  # first: a reconcile fails while the database does
        if self._uncertain or clock >= self._next_reconcile:
            self._reconcile()
        if self.running_count() and clock >= self._next_cancel_check:
            self._next_cancel_check = clock + CANCEL_CHECK_S
            self._honour_cancel_requests()
        return self._cycle(now)

    def _cycle(self, now: datetime | None) -> int:
        assert self.id is not None and self._executor is not None
        with self._lock:
            ending = [r for r in self._attempts.values() if r.outcome is not None and not r.settled]
            # A slot is free once its thread has returned and its outcome is written:
            # the outcomes this pass writes free theirs in the same transaction.
            busy = len(self._attempts) - sum(1 for r in ending if r.returned)
            exclude = sorted({r.claim.id for r in self._attempts.values() if not r.returned})
        limit = 0 if self._draining else self.max_concurrent - busy
        finished = [(r.claim, r.outcome) for r in ending if r.outcome is not None]
        began = self.clock()
        try:
            cycle = self.store.cycle(
                self.id, finished, limit, now, exclude, self.types, self.queues
            )
        except NotRegistered:
            self._rejoin(now)  # whoever reaped the old identity ended its attempts
            return 0
        except BaseException:
            self._uncertain = True  # reconcile before claiming again
            raise
        self._settle(ending, cycle.applied)
        self._dispatch(cycle.claims)
        self.metrics.claimed(cycle.claims)
        self._plan(cycle, began)
        return len(cycle.claims)

    def _settle(self, ending: list[Running], applied: list[bool]) -> None:
        """Mark what the pass wrote (or the fence refused) as settled; free their slots."""
        for running, ok in zip(ending, applied, strict=True):
            if not ok:
                log.info("late outcome of task %s attempt %d refused by its row", *running.key)
        self.metrics.finished([(r, r.outcome) for r in ending], applied, self.clock())
        with self._lock:
            # Only these changed: those whose thread returned already leave.
            attempts = self._attempts
            for running in ending:
                running.settled = True
                if running.returned and attempts.get(running.key) is running:
                    del attempts[running.key]
            self._lock.notify_all()

    def _plan(self, result: PassResult, began: float) -> None:
        # While every slot is taken, a finishing task wakes the loop; otherwise sleep no
        # longer than until the next held-back task falls due.
        if result.next_due is None:
            self._next_due = None
        else:
            self._next_due = began + (result.next_due - result.now).total_seconds()

    def _dispatch(self, claims: list[Claim]) -> None:
        assert self._executor is not None
        if not claims:
            return
        dispatched = self.clock()
        runnings = [Running(claim, started=dispatched) for claim in claims]
        with self._lock:  # every attempt is known before its thread can end it
            self._attempts.update((running.key, running) for running in runnings)
        for k, running in enumerate(runnings):
            try:
                self._executor.start(_Job(self, running))
            except BaseException:
                self._unstarted(runnings[k:])
                raise

    def _unstarted(self, runnings: list[Running]) -> None:
        """Forget attempts whose thread could not start: they run nowhere and hold no
        slot. Their rows, RUNNING for this instance, go back to the queue unspent when the
        next pass compares them with what runs here."""
        with self._lock:
            for running in runnings:
                running.settled = running.returned = True
                if self._attempts.get(running.key) is running:
                    del self._attempts[running.key]
            self._lock.notify_all()
        self._uncertain = True

    def _begin(self, running: Running) -> None:
        """Called on the attempt's own thread as it starts: its timeout runs from now."""
        running.started = self.clock()
        if running.claim.timeout_ms is not None:
            with self._lock:
                running.deadline = running.started + running.claim.timeout_ms / 1000
            self._deadlines_changed.set()  # the timeouts' thread waits for the earliest
        faults.point("thread.started", running=running, scheduler=self)

    def _run(self, running: Running) -> Outcome:
        read = partial(self.store.dependency_results, running.claim.id)
        return call_handler(self.registry, running, partial(self._progress, running.claim), read)

    def _end(self, running: Running, outcome: Outcome | None) -> None:
        """Called on the attempt's own thread as it returns."""
        with self._lock:
            running.returned = True
            if running.settled and not running.cut_off:
                self._log_discarded(running)
            elif not running.cut_off:
                running.outcome = outcome or Outcome(
                    Status.FAILED,
                    error="The handler's thread ended without a result.",
                    error_code="handler_error",
                )
            # Only this attempt changed: it leaves if it was settled already (every other
            # change of an attempt forgets what it freed under the same lock).
            if running.settled and self._attempts.get(running.key) is running:
                del self._attempts[running.key]
                self._lock.notify_all()
        self._wakeup.set()

    def _discard(self, running: Running) -> None:
        """Settle an attempt whose row no longer holds it: nothing of it is written."""
        running.settled = True
        running.stop("lost")
        if running.outcome is not None:
            self._log_discarded(running)

    @staticmethod
    def _log_discarded(running: Running) -> None:
        log.info(
            "late outcome of task %s attempt %d not written: its row no longer holds the attempt",
            *running.key,
        )

    def _forget_done(self) -> None:
        """Drop the attempts that no longer hold a slot (call with the lock held)."""
        for key in [k for k, r in self._attempts.items() if not r.holds_slot]:
            del self._attempts[key]
        self._lock.notify_all()

    def _watch_timeouts(self) -> None:
        """Thread: end each attempt at its timeout, whatever the loop waits for (a lock, a
        database that does not answer); the loop writes the outcome when it can."""
        while True:
            # Woken only by a new deadline (or a stop), not by every change of an attempt.
            # Cleared before the halt is read: a stop sets the halt, then the event.
            self._deadlines_changed.clear()
            if self._halt.is_set():
                return
            with self._lock:
                deadlines = [r.deadline for r in self._timing() if r.deadline is not None]
            wait = min(deadlines) - self.clock() if deadlines else WATCH_TIMEOUTS_S
            if wait > 0:
                self._deadlines_changed.wait(min(wait, WATCH_TIMEOUTS_S))
                continue
            if self.expire_timeouts():
                self.wake()

    def _timing(self) -> list[Running]:
        """The attempts that can still time out (call with the lock held)."""
        return [
            r
            for r in self._attempts.values()
            if r.deadline is not None and r.outcome is None and not r.settled and not r.returned
        ]

    def expire_timeouts(self) -> int:
        """Fail the attempts past their deadline (cancel those a user asked to stop) and
        stop their handlers; return how many. In memory: the next pass writes them."""
        clock = self.clock()
        with self._lock:
            expired = [r for r in self._timing() if r.deadline is not None and r.deadline <= clock]
            for running in expired:
                limit = running.claim.timeout_ms
                if running.stop_reason == "cancel":
                    error = f"Cancelled by a user; still running at its timeout of {limit} ms."
                    running.outcome = Outcome(Status.CANCELLED, error=error, error_code="cancelled")
                else:
                    error = f"The attempt exceeded its timeout of {limit} ms."
                    running.outcome = Outcome(Status.FAILED, error=error, error_code="timeout")
                # Written by the next pass; the slot stays taken until the thread returns.
                running.cut_off = True
        for running in expired:
            running.stop("timeout")
        return len(expired)

    def _honour_cancel_requests(self) -> None:
        assert self.id is not None
        for key in self.store.cancel_requests(self.id):
            with self._lock:
                running = self._attempts.get(key)
            if running is not None:
                running.stop("cancel")

    def honour_cancel_requests(self) -> None:
        """Stop at once the attempts of this instance that users asked to stop (the loop
        also looks every few seconds)."""
        if self.id is not None:
            _safely(self._honour_cancel_requests)

    def cancel_running(self, task_id: str, attempt: int) -> bool:
        """Ask the handler of this attempt to stop, if this instance runs it."""
        with self._lock:
            running = self._attempts.get((task_id, attempt))
        if running is None:
            return False
        running.stop("cancel")
        return True

    # -- what only this process knows, held against the database -------------------

    def _reconcile(self) -> None:
        """Compare the attempts the database holds RUNNING for this instance with ours.

        A claim whose commit succeeded while its acknowledgement was lost left rows RUNNING
        that no thread runs: they go back to the queue, not counted as failures. An attempt
        of ours whose row another instance ended is stopped, its outcome not written.
        """
        assert self.id is not None
        owned = {c.key: c for c in self.store.owned(self.id)}
        with self._lock:
            mine = {k: r for k, r in self._attempts.items() if r.claim.worker == self.id}
            for key, running in mine.items():
                if key not in owned and not running.settled:
                    # Written by a commit whose answer we did not see, or ended elsewhere.
                    self._discard(running)
            self._forget_done()
        for key, claim in owned.items():
            if key not in mine and self.store.requeue(claim, LOST):
                log.warning("task %s attempt %d was claimed unseen; requeued", *key)
        self._uncertain = False
        self._next_reconcile = self.clock() + self.lease_s / 3

    def declared_dead(self, instance_id: str) -> None:
        """Note that `instance_id` was declared dead (its heartbeat found it gone)."""
        self._declared_dead = instance_id
        self.wake()

    def _join(self, now: datetime | None = None) -> None:
        """Register under a new identity: at start, or after being declared dead. The
        identity is this instance's once the database holds it, not before: one that
        failed to register is nobody's, to show, write back or deregister."""
        joining = self._name()
        self.types = self.registry.types()
        at = now or self.store.database_now()
        self.store.register(
            {
                "id": joining,
                "hostname": self.host,
                "pid": os.getpid(),
                "process_start": identity.start_time(os.getpid()),
                "started_at": at,
                "heartbeat_at": at,
                "heartbeat_monotonic": self.store.monotonic(),
                "state": "draining" if self._draining else "running",
                "task_types": json.dumps(self.types) if self.types else None,
                "queues": json.dumps(self.queues) if self.queues else None,
                "slots": self.max_concurrent,
                "lease_s": self.lease_s,
            }
        )
        self.id = joining
        self._warn_of_sleepers()

    def _warn_of_sleepers(self) -> None:
        """Warn when real handlers and a scheduler that sleeps for every type run together.

        A scheduler with no handler (and STRICT_TASK_TYPES off) claims every type and runs
        it as the simulated sleep, real work included: almost always a forgotten
        TASK_HANDLERS where other schedulers have handlers.
        """
        others = [i for i in self.store.instances() if i.id != self.id and i.state == "running"]
        handled = sorted(
            {t for i in others if i.task_types for t in json.loads(i.task_types)} - {SIMULATE}
        )
        sleepers = [i.id for i in others if i.task_types is None]
        if not self.types and handled:
            log.warning(
                "this scheduler has no handler and runs every task type as the simulated "
                "sleep, while others run handlers for %s: set TASK_HANDLERS, or "
                "STRICT_TASK_TYPES=true",
                ", ".join(handled),
            )
        elif set(self.types) - {SIMULATE} and sleepers:
            log.warning(
                "scheduler(s) %s have no handler and run every task type as the simulated "
                "sleep, this one's types (%s) included: set TASK_HANDLERS there, or "
                "STRICT_TASK_TYPES=true",
                ", ".join(sleepers),
                ", ".join(t for t in self.types if t != SIMULATE),
            )

    def _rejoin(self, now: datetime | None) -> None:
        # Whoever declared us dead ended the attempts of the old identity: stop them, and
        # let their threads keep their slots until they return. Said once: while the
        # registration fails, each pass tries again (and logs its failure).
        if not self._rejoining:
            log.error("scheduler %s was declared dead; rejoining under a new identity", self.id)
            self._rejoining = True
        with self._lock:
            for running in self._attempts.values():
                if running.claim.worker == self.id and not running.settled:
                    self._discard(running)
            self._forget_done()
        self._declared_dead = None
        self._join(now)
        self._rejoining = False
        log.info("scheduler rejoined as %s", self.id)

    # -- for /health and the loop's sleep -------------------------------------------

    def sleep_for(self) -> float:
        """Sleep until the polling interval, the next timeout, or the next due task."""
        now = self.clock()
        moments = [now + self.poll_interval_s]
        with self._lock:
            # Only attempts that can still time out: one already ended (timed out, or
            # settled) keeps its past deadline while its thread runs on.
            moments += [
                r.deadline
                for r in self._attempts.values()
                if r.deadline is not None and r.outcome is None and not r.settled
            ]
            if self._attempts:
                moments.append(self._next_cancel_check)
        if self._next_due is not None:
            moments.append(self._next_due)
        return max(0.0, min(moments) - now)

    def listening(self) -> bool | None:
        """Tell whether other instances' wake-ups reach this one: PostgreSQL's
        notifications, or on SQLite other processes' (None for a database in memory,
        which no other process shares)."""
        if not self.store.shared_clock and wakeups.bell(self.store.engine) is None:
            return None
        return self._listener is not None and self._listener.listening.is_set()

    def wait_for_handlers(self, timeout_s: float) -> int:
        """Give stopped handlers up to `timeout_s` to return; say how many still hold a slot."""
        return self._await_attempts(timeout_s)

    def _await_attempts(self, timeout_s: float, hurry: threading.Event | None = None) -> int:
        """Wait until the instance is idle, `timeout_s` passes or `hurry` is set."""
        deadline = self.clock() + timeout_s
        with self._lock:
            while not self._idle():
                if hurry is not None and hurry.is_set():
                    break
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.1))
            return len(self._attempts)

    def idle(self) -> bool:
        """Tell whether a stop may end now: no attempt holds a slot and no pass is under
        way (the tasks a pass claims show RUNNING before they are among the attempts)."""
        with self._lock:
            return self._idle()

    def _idle(self) -> bool:
        return not self._attempts and not self._passing

    def running_count(self) -> int:
        """Return how many attempts hold a slot of this instance now."""
        with self._lock:
            return len(self._attempts)

    def attempts(self) -> list[Running]:
        """Return the attempts holding a slot (for tests and the simulation)."""
        with self._lock:
            return list(self._attempts.values())

    def healthy(self) -> bool:
        """Tell whether the loop has ticked within two polling intervals."""
        return self.problem() is None

    def problem(self) -> str | None:
        """Say what keeps the scheduler from doing its job, or None when nothing does."""
        if self.state == "draining":
            return None
        if self.state == "starting" and self.unregistered_because is not None:
            return f"the scheduler cannot register: {self.unregistered_because}"
        if self.state != "running":
            return f"the scheduler is {self.state}"
        if self._rejoining:
            return "the scheduler was declared dead and cannot register again yet"
        if self.last_tick is None:
            return "the scheduler loop has not run its first pass"
        age = self.clock() - self.last_tick
        limit = max(2 * self.poll_interval_s, 1.0)
        if age > limit:
            return f"the scheduler loop has not run a pass for {age:.0f} s (limit {limit:g} s)"
        return None

    def _progress(self, claim: Claim, percent: int) -> None:
        try:
            self.store.report_progress(claim, percent)
        except Exception:
            log.warning("could not record the progress of task %s", claim.id)

    def _persist(self, action: Callable[..., T], *args: object) -> T | None:
        """Write at shutdown, trying again for a few seconds while the database fails.

        What is not written here is found later as an interrupted attempt.
        """
        delay = 0.1
        for _ in range(SHUTDOWN_WRITE_TRIES - 1):
            try:
                return action(*args)
            except Exception as exc:
                _log_failure(action, exc, "; trying again")
            if self._hurry.wait(delay):
                break
            delay *= 2
        return _safely(action, *args)


class _Job:
    """One attempt as an executor runs it: begin, the handler, end."""

    def __init__(self, scheduler: Scheduler, running: Running) -> None:
        self.scheduler = scheduler
        self.running = running

    def begin(self) -> None:
        self.scheduler._begin(self.running)

    def run(self) -> Outcome:
        return self.scheduler._run(self.running)

    def end(self, outcome: Outcome | None) -> None:
        self.scheduler._end(self.running, outcome)


_AT_SHUTDOWN = {
    Status.QUEUED: "requeued",
    Status.CANCELLED: "cancelled, as a user had asked, when its attempt was stopped",
}


def _instance_name() -> str:
    return f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _name(action: Callable[..., object]) -> str:
    return getattr(action, "__name__", str(action))


def _safely(action: Callable[..., T], *args: object) -> T | None:
    try:
        return action(*args)
    except Exception as exc:
        _log_failure(action, exc)
        return None


def _log_failure(action: Callable[..., object], exc: Exception, then: str = "") -> None:
    """Log a write that failed at shutdown: one line for an outage, a traceback for a bug."""
    fault = dbfaults.classify(exc)
    if fault is None:
        log.error("%s failed during shutdown%s", _name(action), then, exc_info=exc)
    else:
        log.error("%s failed during shutdown%s: %s", _name(action), then, fault.problem)
