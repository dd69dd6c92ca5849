"""The SQL that must be exact: claim, fenced finish, requeue, reconcile and reap."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, case, delete, select, update
from sqlalchemy.exc import DataError, IntegrityError

from app import events, faults
from app.errors import ApiError, DuplicateId
from app.events import Change
from app.handlers import MAX_DEPENDENCY_RESULTS_BYTES, HandlerFailed
from app.statuses import Status
from app.storage import attempts, database, readiness, scheduler_sql
from app.storage import queues as queue_rows
from app.storage import tasks as stored
from app.storage.attempts import Ended
from app.storage.database import stamp, storable, utcnow
from app.storage.membership import Membership, host_name
from app.storage.models import DEFAULT_QUEUE
from app.storage.notify import announce
from app.storage.propagation import settle
from app.storage.tables import CHUNK, RUNNING, instances, tasks

MAX_BACKOFF = timedelta(hours=1)
# Delayed tasks made ready per claim at most: a burst falling due at once is promoted over
# a few passes, in transactions that stay short.
PROMOTE_BATCH = 1000
CANCELLED_WHILE_RUNNING = "Cancelled by a user while running."


class NotRegistered(Exception):
    """Raised when an instance that was declared dead tries to claim."""


class Claim(NamedTuple):
    """One attempt a scheduler instance holds: the fence every later write carries.

    A tuple rather than a frozen dataclass: a pass makes one for each task it claims, and
    a tuple is made in a third of the time.
    """

    id: str
    type: str
    duration_ms: int
    payload: Any
    attempt: int
    worker: str
    failures: int
    max_attempts: int
    retry_backoff_ms: int
    timeout_ms: int | None = None
    waited_s: float = 0.0  # from the task's creation to this attempt's start
    queue: str = DEFAULT_QUEUE
    # When the claim started it, as the row holds it (its history row repeats it).
    started_at: Any = None

    @property
    def key(self) -> tuple[str, int]:
        """The attempt's identity: a task id and an attempt number are never reused."""
        return (self.id, self.attempt)


@dataclass(frozen=True)
class PassResult:
    """What one scheduler pass did: which outcomes applied, what it claimed, what is next."""

    applied: list[bool]
    claims: list[Claim]
    now: datetime
    next_due: datetime | None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    status: Status
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    # Tasks the handler added (loaded task bodies), created with the completion.
    children: tuple[dict[str, Any], ...] = ()
    # The handler's traceback, when it raised.
    traceback: str | None = None


# spawn(conn, claim, added tasks, now): creates the tasks; raises ApiError to refuse them.
Spawn = Callable[[Connection, "Claim", Sequence[dict[str, Any]], datetime], None]


class _Stale(Exception):
    """The row no longer holds the attempt whose outcome was being written."""


class _Claimed(NamedTuple):
    claims: list[Claim]
    more_due: bool
    token_at: datetime | None


# What an attempt a user asked to stop becomes when its instance would put it back.
_STOPPED_AT_REQUEUE = Outcome(
    Status.CANCELLED,
    error="Cancelled by a user; the attempt was stopped before it finished.",
    error_code="cancelled",
)


class Store(Membership):
    """The task table's state transitions, each one transaction with a fence."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(engine, clock, monotonic)
        self.rng = rng or random.Random()
        # Creates the tasks a completed attempt added, inside its completion's transaction
        # (services/fanout.spawn, given by the app); raises ApiError to refuse them.
        self.spawn: Spawn | None = None

    def dependency_results(self, task_id: str) -> dict[str, Any]:
        """Return `{dependency id: result}` of a task, or raise HandlerFailed past
        MAX_DEPENDENCY_RESULTS_BYTES (read for a handler, on its thread)."""
        with database.read(self.engine) as conn:
            size = stored.dependency_results_size(conn, task_id)
            if size > MAX_DEPENDENCY_RESULTS_BYTES:
                raise HandlerFailed(
                    f"The results of this task's dependencies are {size:,} bytes of JSON; "
                    f"dependency_results loads at most {MAX_DEPENDENCY_RESULTS_BYTES:,}."
                )
            return stored.dependency_results(conn, task_id)

    def claim(
        self,
        worker: str,
        limit: int,
        now: datetime | None = None,
        types: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> list[Claim]:
        """Move up to `limit` ready tasks to RUNNING for `worker`, best first.

        With `types`, only tasks of those types (the ones `worker` has handlers for); with
        `queues`, only tasks of those queues.
        """
        if limit <= 0:
            return []
        with database.write(self.engine) as conn:
            # Read the clock inside the transaction, once the write lock is held, so a
            # start is never stamped before the finish that made the task ready.
            at = now or self.now(conn)
            return self._claim_as(conn, worker, limit, at, types=types, queues=queues).claims

    def _claim_as(
        self,
        conn: Connection,
        worker: str,
        limit: int,
        now: datetime,
        exclude: Sequence[str] = (),
        types: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> _Claimed:
        """Promote the delayed tasks now due, then claim from the queues that may start
        tasks now; say also whether more are due, and when a rate-limited queue gets its
        next token.

        More are due when the promotion stopped at its batch size: the caller should pass
        again at once rather than sleep until the next due time.
        """
        # Only a registered instance claims. On PostgreSQL FOR SHARE holds off a reaper's
        # delete until this claim commits, so nothing is claimed under a dead identity;
        # on SQLite the claim checks it, and a claim short of `limit` asks which it was.
        shared = conn.dialect.name == "postgresql"
        if shared and not scheduler_sql.is_member(conn, worker):
            raise NotRegistered(worker)
        read = None
        if shared:  # one round trip for the promotion and the queues' rows
            promoted, read = scheduler_sql.promote_reading_queues(conn, now, PROMOTE_BATCH)
        else:
            promoted = scheduler_sql.promote(conn, now, PROMOTE_BATCH)
        if promoted:
            # Other instances may have slots for what this one does not claim.
            announce(conn)
        plan = queue_rows.walks(conn, now, limit, queues, read)
        rows = scheduler_sql.claim(conn, worker, limit, now, plan.caps, exclude, types)
        if plan.buckets:
            queue_rows.spend(conn, plan, [r.queue for r in rows], now)
        if not shared and len(rows) < limit and not scheduler_sql.is_member(conn, worker):
            raise NotRegistered(worker)
        payload_of = scheduler_sql.payload_of
        claims = [
            Claim(
                r.id,
                r.type,
                r.duration_ms,
                payload_of(r.payload),
                r.attempts,
                worker,
                r.failures,
                r.max_attempts,
                r.retry_backoff_ms,
                r.timeout_ms,
                max(0.0, r.waited or 0.0),
                r.queue,
                r.started_at,
            )
            for r in rows
        ]
        if claims:
            reason = f"claimed by {worker}"
            events.stage([(c.id, c.type, c.attempt, Status.RUNNING, reason) for c in claims])
        return _Claimed(claims, promoted >= PROMOTE_BATCH, plan.next_token_at)

    def finish(self, claim: Claim, outcome: Outcome, now: datetime | None = None) -> bool:
        """Record how an attempt ended, if the row still holds this attempt."""

        def work(conn: Connection) -> bool:
            return self.finish_all(conn, [(claim, outcome)], now or self.now(conn))[0]

        return database.transaction(self.engine, work)

    def cycle(
        self,
        worker: str,
        finished: list[tuple[Claim, Outcome]],
        limit: int,
        now: datetime | None = None,
        exclude: Sequence[str] = (),
        types: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> PassResult:
        """Record finished attempts and claim up to `limit` tasks, in one transaction.

        One commit per scheduler pass, whatever the number of tasks it settles and starts:
        durability costs little, and a dependent is claimed in the very transaction that
        records its last dependency's completion. When slots stay free, it also says when
        the next held-back task (run_at, retry backoff) falls due: now, when more fell due
        than one pass promotes. `exclude` names tasks
        the caller must not claim (an earlier attempt of theirs still holds its thread);
        `types` and `queues`, when given, the only types and queues it claims.
        """

        def work(conn: Connection) -> PassResult:
            at = now or self.now(conn)
            applied = self.finish_all(conn, finished, at) if finished else []
            if limit <= 0:
                return PassResult(applied, [], at, None)
            claimed = self._claim_as(conn, worker, limit, at, exclude, types, queues)
            due = None
            if len(claimed.claims) < limit:
                due = at if claimed.more_due else scheduler_sql.next_run_at(conn, at)
                if claimed.token_at is not None and (due is None or claimed.token_at < due):
                    due = claimed.token_at
            return PassResult(applied, claimed.claims, at, due)

        done = database.transaction(self.engine, work)
        faults.point("cycle.committed", worker=worker, cycle=done)
        return done

    def finish_all(
        self,
        conn: Connection,
        finished: list[tuple[Claim, Outcome]],
        now: datetime,
        host: str | None = None,
    ) -> list[bool]:
        """Record each outcome that its row still fences, and its attempt in the history
        (run on `host`, else on the host of the instance that claimed it); settle what
        ended, together."""
        is_plain = [_is_plain_success(o) for _, o in finished]
        plain = [c for (c, _), p in zip(finished, is_plain, strict=True) if p]
        # Their history rows are written with them (scheduler_sql.complete).
        applied_plain = self._complete_plain(conn, plain, now, host) if plain else set()
        if len(plain) == len(finished):  # the usual pass: handlers that returned nothing
            return self._completed_plainly(conn, plain, applied_plain, now)
        applied: list[bool] = []
        ended: dict[str, Status] = {}
        requeued: list[str] = []
        changes: list[Change] = []
        history: list[Ended] = []
        for (claim, outcome), simple in zip(finished, is_plain, strict=True):
            if simple:
                ok = claim.key in applied_plain
                written: tuple[Status, str | None] | None = _COMPLETED if ok else None
            elif outcome.children:
                outcome, written = self._complete_with_children(conn, claim, outcome, now)
            else:
                written = self._write_outcome(conn, claim, outcome, now)
            applied.append(written is not None)
            if written is None:
                continue
            status, error = written
            why = _why(status, outcome, error)
            changes.append((claim.id, claim.type, claim.attempt, status.value, why))
            if not simple:
                where = host or self.hosts.get(claim.worker)
                history.append(_ended(claim, outcome, status, why, where, claim.started_at))
            if status.terminal:
                ended[claim.id] = status
            elif status is Status.QUEUED:
                requeued.append(claim.id)
        events.stage(changes)
        if history:
            attempts.record(conn, history, now)
        readied = bool(ended) and settle(conn, ended, now)
        if requeued:
            recount(conn, requeued)
        if readied or requeued:
            # Dependents made ready, or attempts back in the queue (at once, or after a
            # backoff whose end the others must plan for): another instance may run them.
            announce(conn)
        return applied

    def _completed_plainly(
        self,
        conn: Connection,
        plain: list[Claim],
        done: set[tuple[str, int]],
        now: datetime,
    ) -> list[bool]:
        """`finish_all`'s bookkeeping when every outcome was a plain completion: stage
        the completions written, settle their dependents; say which were written."""
        applied = [(c.id, c.attempt) in done for c in plain]
        written = [c for c, ok in zip(plain, applied, strict=True) if ok]
        completed, why = Status.COMPLETED.value, _why(Status.COMPLETED, _PLAIN, None)
        events.stage([(c.id, c.type, c.attempt, completed, why) for c in written])
        ended = dict.fromkeys([c.id for c in written], Status.COMPLETED)
        if ended and settle(conn, ended, now):
            announce(conn)  # dependents made ready: another instance may run them
        return applied

    def _complete_with_children(
        self, conn: Connection, claim: Claim, outcome: Outcome, now: datetime
    ) -> tuple[Outcome, tuple[Status, str | None] | None]:
        """Complete an attempt and create the tasks it added, together, if fenced.

        When the tasks are refused (MAX_QUEUED_TASKS, an id taken, a type no handler
        runs...), none is created and the attempt fails instead, with the refusal's code
        as its error_code, to be retried by its policy. Return the outcome written.
        """
        savepoint = conn.begin_nested()
        try:
            # What the added tasks stage joins the pass's changes only if all of it holds.
            with events.held():
                if self.spawn is None:
                    raise ApiError("This instance cannot add tasks to the graph.")
                # First, while the task is still RUNNING: the added tasks that depend on
                # it count it as unfinished, and the completion's settle counts them down.
                self.spawn(conn, claim, outcome.children, now)
                written = self._write_outcome(conn, claim, outcome, now)
                if written is None:
                    raise _Stale
        except _Stale:  # the row no longer holds this attempt: what it added goes too
            savepoint.rollback()
            return outcome, None
        except (ApiError, IntegrityError, DataError) as exc:
            savepoint.rollback()
            refused = _refused(exc, len(outcome.children))
            return refused, self._write_outcome(conn, claim, refused, now)
        savepoint.commit()
        return outcome, written

    def _complete_plain(
        self, conn: Connection, claims: list[Claim], now: datetime, host: str | None = None
    ) -> set[tuple[str, int]]:
        """Complete attempts that returned nothing, in one fenced statement per chunk,
        with their history rows (run on `host`, else on their instance's host); return
        those completed."""
        done: set[tuple[str, int]] = set()
        for worker, chunk in _chunks_by_worker(claims):
            pairs = [c.key for c in chunk]
            where = host or self.hosts.get(worker)
            done.update(scheduler_sql.complete(conn, worker, pairs, now, where))
        return done

    def requeue(self, claim: Claim, reason: str | None = None) -> Status | None:
        """Put a running attempt back to QUEUED without spending the retry budget.

        An attempt a user asked to stop ends CANCELLED instead: it will not run again.
        Return the status the task was left in, or None when the row no longer held it.
        """
        return self.requeue_all([claim], reason)[0]

    def requeue_all(self, claims: list[Claim], reason: str | None = None) -> list[Status | None]:
        """Put running attempts back to QUEUED, as `requeue` does each, in one transaction
        (a drain's: a hurried stop must write a thousand of them within seconds)."""
        why = reason or "back in the queue: its instance stopped before it finished"
        for claim in claims:
            faults.point("requeue.before_write", claim=claim)

        def work(conn: Connection) -> list[Status | None]:
            now = self.now(conn)
            left: dict[tuple[str, int], Status | None] = {}
            stopped: list[tuple[Claim, Outcome]] = []
            back: list[Claim] = []
            # Rows locked in id order, as every multi-row lock here.
            for worker, chunk in _chunks_by_worker(sorted(claims, key=lambda c: c.id)):
                put_back = scheduler_sql.requeue(conn, worker, [c.key for c in chunk], now)
                for claim in chunk:
                    if claim.id in put_back:
                        back.append(claim)
                        left[claim.key] = Status.QUEUED
                    else:  # a user asked it to stop, or the row no longer holds it
                        stopped.append((claim, _STOPPED_AT_REQUEUE))
            if stopped:
                written = self.finish_all(conn, stopped, now)
                for (claim, _), ok in zip(stopped, written, strict=True):
                    left[claim.key] = Status.CANCELLED if ok else None
            if back:
                recount(conn, [c.id for c in back])
                events.stage([(c.id, c.type, c.attempt, Status.QUEUED.value, why) for c in back])
                hosts = self.hosts
                history = [
                    Ended(
                        c.id, c.attempt, c.worker, hosts.get(c.worker), c.started_at, "QUEUED", why
                    )
                    for c in back
                ]
                attempts.record(conn, history, now)
                announce(conn)
            return [left[c.key] for c in claims]

        return database.transaction(self.engine, work)

    def owned(self, worker: str) -> list[Claim]:
        """Return the attempts the database holds RUNNING for `worker`, as claims."""
        query = select(*_CLAIM_COLUMNS).where(RUNNING, tasks.c.worker == worker)
        with database.read(self.engine) as conn:
            return [_as_claim(row, worker) for row in conn.execute(query)]

    def _write_outcome(
        self, conn: Connection, claim: Claim, outcome: Outcome, now: datetime
    ) -> tuple[Status, str | None] | None:
        """Write one outcome if fenced; return the status and error it left, or None."""
        at = stamp(conn, now)
        values: dict[str, Any] = {
            "updated_at": at,
            "error": storable(outcome.error),
            "error_code": outcome.error_code,
            "status": outcome.status.value,
        }
        if outcome.status.terminal:
            values.update(finished_at=at, result=outcome.result)
        if outcome.status is Status.FAILED:
            values["failures"] = tasks.c.failures + 1
            if claim.failures + 1 < claim.max_attempts:
                delay = backoff(claim.retry_backoff_ms, claim.failures + 1, self.rng)
                values.update(status=Status.QUEUED.value, finished_at=None, not_before=now + delay)
            _cancelled_if_asked(values, at)
        stmt = (
            update(tasks)
            .where(*_fence(claim))
            .values(**values)
            .returning(tasks.c.status, tasks.c.error)
        )
        row = conn.execute(stmt).first()
        return None if row is None else (Status(row.status), row.error)

    def report_progress(self, claim: Claim, percent: int) -> bool:
        """Record a running attempt's progress, if the row still holds the attempt."""
        stmt = update(tasks).where(*_fence(claim)).values(progress=percent)
        with database.write(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def cancel_requests(self, worker: str) -> list[tuple[str, int]]:
        """Return the running attempts of `worker` that a user asked to stop."""
        query = select(tasks.c.id, tasks.c.attempts).where(
            RUNNING, tasks.c.worker == worker, tasks.c.cancel_requested.is_(True)
        )
        with database.read(self.engine) as conn:
            return [(i, a) for i, a in conn.execute(query)]

    def reap(
        self,
        worker: str,
        reason: str,
        stale_before: datetime | None = None,
        now: datetime | None = None,
        *,
        stale_monotonic_before: float | None = None,
    ) -> list[str]:
        """Forget a dead instance and end every attempt it holds as interrupted.

        With `stale_before`, only if its heartbeat is still older than that when the
        transaction holds its row: an instance that heartbeated meanwhile is alive.
        `stale_monotonic_before` is the same fence on the host's monotonic clock.
        """
        forget = delete(instances).where(instances.c.id == worker).returning(instances.c.hostname)
        if stale_before is not None:
            forget = forget.where(instances.c.heartbeat_at < stale_before)
        if stale_monotonic_before is not None:
            forget = forget.where(instances.c.heartbeat_monotonic < stale_monotonic_before)
        fenced = stale_before is not None or stale_monotonic_before is not None

        def work(conn: Connection) -> list[str]:
            if conn.dialect.name == "postgresql":
                # Never wait long on a lock a paused instance holds: try again next pass.
                conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            # Deleting the row first takes its lock: a claim by that instance either
            # committed before (and is ended below) or finds it gone (and claims nothing).
            gone = conn.execute(forget).first()
            if gone is None and fenced:
                return []
            host = None if gone is None else host_name(gone.hostname)
            query = select(*_CLAIM_COLUMNS).where(RUNNING, tasks.c.worker == worker)
            interrupted = []
            for row in conn.execute(query).all():
                error = f"Attempt {row.attempts} was interrupted: {reason}."
                ended = Outcome(Status.FAILED, error=error, error_code="interrupted")
                interrupted.append((_as_claim(row, worker), ended))
            applied = self.finish_all(conn, interrupted, now or self.now(conn), host)
            return [c.id for (c, _), ok in zip(interrupted, applied, strict=True) if ok]

        return database.transaction(self.engine, work)


_CLAIM_COLUMNS = (
    tasks.c.started_at,
    tasks.c.id,
    tasks.c.type,
    tasks.c.duration_ms,
    tasks.c.attempts,
    tasks.c.failures,
    tasks.c.max_attempts,
    tasks.c.retry_backoff_ms,
    tasks.c.timeout_ms,
)


def _as_claim(row: Any, worker: str, payload: Any = None, waited_s: float = 0.0) -> Claim:
    """Return the claim a task row shows: its running attempt, held by `worker`."""
    return Claim(
        row.id,
        row.type,
        row.duration_ms,
        payload,
        row.attempts,
        worker,
        row.failures,
        row.max_attempts,
        row.retry_backoff_ms,
        row.timeout_ms,
        waited_s,
        getattr(row, "queue", DEFAULT_QUEUE),
        getattr(row, "started_at", None),
    )


def _cancelled_if_asked(values: dict[str, Any], at: Any) -> None:
    """Make a failure's values end the task CANCELLED when a user asked it to stop.

    Decided by the row, in the statement that writes the failure: whichever instance sees
    the failure, and whatever the retry budget, an attempt asked to stop is not retried.
    """
    asked = tasks.c.cancel_requested.is_(True)
    instead = {
        "status": Status.CANCELLED.value,
        "error": CANCELLED_WHILE_RUNNING,
        "error_code": "cancelled",
        "finished_at": at,
        "not_before": tasks.c.not_before,
    }
    for name, value in instead.items():
        values[name] = case((asked, value), else_=values.get(name, tasks.c[name]))


def _ended(
    claim: Claim, outcome: Outcome, status: Status, why: str, host: str | None, started: Any
) -> Ended:
    """Return the history row of an attempt whose outcome left its task in `status`."""
    error: str | None
    code: str | None
    if status is Status.CANCELLED and outcome.status is not Status.CANCELLED:
        # Asked to stop, it ended otherwise: the task is cancelled, not retried.
        kind, error, code = Status.CANCELLED.value, why, "cancelled"
    else:
        kind, error, code = outcome.status.value, outcome.error, outcome.error_code
    return Ended(
        claim.id, claim.attempt, claim.worker, host, started, kind, error, code, outcome.traceback
    )


_COMPLETED: tuple[Status, str | None] = (Status.COMPLETED, None)
_PLAIN = Outcome(Status.COMPLETED)


def _why(status: Status, outcome: Outcome, error: str | None) -> str:
    """The reason a state-change log line gives for an outcome."""
    if status is Status.COMPLETED:
        return "the handler returned"
    if status is Status.CANCELLED and outcome.status is not Status.CANCELLED:
        return f"{error} (cancelled); the attempt ended: {outcome.error}"
    code = f" ({outcome.error_code})" if outcome.error_code else ""
    if status is Status.QUEUED:
        return f"attempt failed{code}, will be retried after a backoff: {outcome.error}"
    return f"{outcome.error}{code}"


def recount(conn: Connection, requeued: list[str]) -> None:
    """Count again the unfinished dependencies of attempts that went back to QUEUED.

    An all_done task may run while a dependency it waited for is retried; if it then goes
    back to the queue, it must wait for that dependency again.
    """
    edges = readiness.dependencies(conn, requeued)
    for task_id in requeued:
        queued = (tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
        count = readiness.pending(edges.get(task_id, []))
        conn.execute(update(tasks).where(*queued).values(pending_deps=count))


def _is_plain_success(outcome: Outcome) -> bool:
    return outcome.status is Status.COMPLETED and outcome.result is None and not outcome.children


def _refused(exc: Exception, added: int) -> Outcome:
    """Return the failure of an attempt whose added tasks were refused."""
    if isinstance(exc, ApiError):
        code, why = exc.code, exc.message
    elif isinstance(exc, IntegrityError):  # a concurrent submission took an id first
        code, why = DuplicateId.code, "A task with one of its ids was stored meanwhile."
    else:  # a value the database refused: never a reason to fail every pass after
        code, why = "invalid_added_tasks", "The database refused a value of them."
    error = f"The {added} task(s) it added were refused ({code}): {why}"
    return Outcome(Status.FAILED, error=error[:1000], error_code=code)


def _chunks_by_worker(claims: list[Claim]) -> Iterator[tuple[str, list[Claim]]]:
    """Group `claims` by worker, in their order, in chunks one fenced statement takes."""
    by_worker: dict[str, list[Claim]] = {}
    for claim in claims:
        by_worker.setdefault(claim.worker, []).append(claim)
    for worker, mine in by_worker.items():
        for start in range(0, len(mine), CHUNK // 2):
            yield worker, mine[start : start + CHUNK // 2]


def _fence(claim: Claim) -> tuple[Any, ...]:
    return (
        tasks.c.id == claim.id,
        RUNNING,
        tasks.c.worker == claim.worker,
        tasks.c.attempts == claim.attempt,
    )


def backoff(base_ms: int, failures: int, rng: random.Random | None = None) -> timedelta:
    """Return the wait before the next attempt: exponential, jittered, capped."""
    delay = timedelta(milliseconds=base_ms * 2 ** min(failures - 1, 32))
    delay *= 1 + (rng or random).random() * 0.25
    return min(delay, MAX_BACKOFF)
