"""The SQL that must be exact: claim, fenced finish, requeue, heartbeat and reap."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from . import database, events, hotpath
from .database import stamp, utcnow
from .events import Change
from .membership import Membership
from .models import Status
from .notify import announce
from .propagation import settle
from .tables import CHUNK, RUNNING, instances, tasks

# Re-exported: older callers import these from here.
from .tables import chunks as chunks
from .tables import deps as deps

MAX_BACKOFF = timedelta(hours=1)
UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


class NotRegistered(Exception):
    """Raised when an instance that was declared dead tries to claim."""


@dataclass(frozen=True)
class Claim:
    """One attempt a scheduler instance holds: the fence every later write carries."""

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


@dataclass(frozen=True)
class Cycle:
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


class Store(Membership):
    """The task table's state transitions, each one transaction with a fence."""

    def claim(self, worker: str, limit: int, now: datetime | None = None) -> list[Claim]:
        """Move up to `limit` ready tasks to RUNNING for `worker`, best first."""
        if limit <= 0:
            return []
        with database.write(self.engine) as conn:
            # Read the clock inside the transaction, once the write lock is held, so a
            # start is never stamped before the finish that made the task ready.
            return self._claim_as(conn, worker, limit, now or utcnow())

    def _claim_as(self, conn: Connection, worker: str, limit: int, now: datetime) -> list[Claim]:
        # Only a registered instance claims; FOR SHARE holds off a reaper's delete until
        # this claim commits, so nothing is claimed under a dead identity.
        if not hotpath.is_member(conn, worker):
            raise NotRegistered(worker)
        return self._claim(conn, worker, limit, now)

    def _claim(self, conn: Connection, worker: str, limit: int, now: datetime) -> list[Claim]:
        claims = [
            Claim(
                id=r.id,
                type=r.type,
                duration_ms=r.duration_ms,
                payload=hotpath.payload_of(r.payload),
                attempt=r.attempts,
                worker=worker,
                failures=r.failures,
                max_attempts=r.max_attempts,
                retry_backoff_ms=r.retry_backoff_ms,
                timeout_ms=r.timeout_ms,
                waited_s=max(0.0, r.waited or 0.0),
            )
            for r in hotpath.claim(conn, worker, limit, now)
        ]
        if claims:
            reason = f"claimed by {worker}"
            events.stage([(c.id, c.type, c.attempt, "RUNNING", reason) for c in claims])
        return claims

    def finish(self, claim: Claim, outcome: Outcome, now: datetime | None = None) -> bool:
        """Record how an attempt ended, if the row still holds this attempt."""
        with database.write(self.engine) as conn:
            return self.finish_all(conn, [(claim, outcome)], now or utcnow())[0]

    def cycle(self, worker: str, finished: list[tuple[Claim, Outcome]], limit: int) -> Cycle:
        """Record finished attempts and claim up to `limit` tasks, in one transaction.

        One commit per scheduler pass, whatever the number of tasks it settles and starts:
        durability costs little, and a dependent is claimed in the very transaction that
        records its last dependency's completion. When slots stay free, it also says when
        the next held-back task (run_at, retry backoff) falls due.
        """
        with database.write(self.engine) as conn:
            now = utcnow()
            applied = self.finish_all(conn, finished, now) if finished else []
            claims = self._claim_as(conn, worker, limit, now) if limit > 0 else []
            due = hotpath.next_run_at(conn, now) if len(claims) < limit else None
        return Cycle(applied, claims, now, due)

    def finish_all(
        self, conn: Connection, finished: list[tuple[Claim, Outcome]], now: datetime
    ) -> list[bool]:
        """Record each outcome that its row still fences; settle what ended, together."""
        plain = [c for c, o in finished if _is_plain_success(o)]
        applied_plain = self._complete_plain(conn, plain, now) if plain else set()
        applied: list[bool] = []
        ended: dict[str, Status] = {}
        requeued: list[str] = []
        changes: list[Change] = []
        for claim, outcome in finished:
            if _is_plain_success(outcome):
                ok = (claim.id, claim.attempt) in applied_plain
                status: Status | None = Status.COMPLETED if ok else None
            else:
                status = self._write_outcome(conn, claim, outcome, now)
            applied.append(status is not None)
            if status is None:
                continue
            why = _why(status, outcome)
            changes.append((claim.id, claim.type, claim.attempt, status.value, why))
            if status.terminal:
                ended[claim.id] = status
            elif status is Status.QUEUED:
                requeued.append(claim.id)
        events.stage(changes)
        if ended and settle(conn, ended, now):
            announce(conn)
        if requeued:
            _recount(conn, requeued)
        return applied

    def _complete_plain(
        self, conn: Connection, claims: list[Claim], now: datetime
    ) -> set[tuple[str, int]]:
        """Complete attempts that returned nothing, in one fenced statement per chunk."""
        done: set[tuple[str, int]] = set()
        by_worker: dict[str, list[Claim]] = {}
        for claim in claims:
            by_worker.setdefault(claim.worker, []).append(claim)
        for worker, mine in by_worker.items():
            for start in range(0, len(mine), CHUNK // 2):
                pairs = [(c.id, c.attempt) for c in mine[start : start + CHUNK // 2]]
                done |= hotpath.complete(conn, worker, pairs, now)
        return done

    def requeue(self, claim: Claim) -> bool:
        """Put a running attempt back to QUEUED without spending the retry budget.

        An attempt a user asked to stop ends CANCELLED instead: it will not run again.
        """
        with database.write(self.engine) as conn:
            stmt = (
                update(tasks)
                .where(*_fence(claim), tasks.c.cancel_requested.is_(False))
                .values(status=Status.QUEUED.value, updated_at=utcnow(), finished_at=None)
            )
            if conn.execute(stmt).rowcount != 1:
                error = "Cancelled by a user; the attempt was stopped at shutdown."
                stopped = Outcome(Status.CANCELLED, error=error, error_code="cancelled")
                return self.finish_all(conn, [(claim, stopped)], utcnow())[0]
            _recount(conn, [claim.id])
            why = "back in the queue: its instance stopped before it finished; not a failure"
            events.stage([(claim.id, claim.type, claim.attempt, Status.QUEUED.value, why)])
            return True

    def _write_outcome(
        self, conn: Connection, claim: Claim, outcome: Outcome, now: datetime
    ) -> Status | None:
        """Write one outcome if fenced; return the status it left, or None if refused."""
        values: dict[str, Any] = {"updated_at": stamp(conn, now), "error": outcome.error}
        values["error_code"] = outcome.error_code
        status = outcome.status
        if status is Status.FAILED:
            values["failures"] = tasks.c.failures + 1
            if claim.failures + 1 < claim.max_attempts:
                status = Status.QUEUED
                values["run_at"] = now + backoff(claim.retry_backoff_ms, claim.failures + 1)
        values["status"] = status.value
        if status.terminal:
            values["finished_at"] = stamp(conn, now)
            values["result"] = outcome.result
        if conn.execute(update(tasks).where(*_fence(claim)).values(**values)).rowcount != 1:
            return None
        return status

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

    def reap(self, worker: str, reason: str, stale_before: datetime | None = None) -> list[str]:
        """Forget a dead instance and end every attempt it holds as interrupted.

        With `stale_before`, only if its heartbeat is still older than that when the
        transaction holds its row: an instance that heartbeated meanwhile is alive.
        """
        query = select(
            tasks.c.id,
            tasks.c.type,
            tasks.c.attempts,
            tasks.c.failures,
            tasks.c.max_attempts,
            tasks.c.retry_backoff_ms,
            tasks.c.cancel_requested,
        ).where(RUNNING, tasks.c.worker == worker)
        interrupted: list[tuple[Claim, Outcome]] = []
        forget = delete(instances).where(instances.c.id == worker)
        if stale_before is not None:
            forget = forget.where(instances.c.heartbeat_at < stale_before)
        with database.write(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                # Never wait long on a lock a paused instance holds: try again next pass.
                conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            # Deleting the row first takes its lock: a claim by that instance either
            # committed before (and is ended below) or finds it gone (and claims nothing).
            if conn.execute(forget).rowcount == 0 and stale_before is not None:
                return []
            now = utcnow()
            for row in conn.execute(query).all():
                claim = Claim(
                    id=row.id,
                    type=row.type,
                    duration_ms=0,
                    payload=None,
                    attempt=row.attempts,
                    worker=worker,
                    failures=row.failures,
                    max_attempts=row.max_attempts,
                    retry_backoff_ms=row.retry_backoff_ms,
                )
                error = f"Attempt {row.attempts} was interrupted: {reason}."
                if row.cancel_requested:
                    # A user asked it to stop, and now the attempt has ended: as asked.
                    ended = Outcome(Status.CANCELLED, error=error, error_code="cancelled")
                else:
                    ended = Outcome(Status.FAILED, error=error, error_code="interrupted")
                interrupted.append((claim, ended))
            applied = self.finish_all(conn, interrupted, now)
            reaped = [c.id for (c, _), ok in zip(interrupted, applied, strict=True) if ok]
        return reaped


def _why(status: Status, outcome: Outcome) -> str:
    """The reason a state-change log line gives for an outcome."""
    if status is Status.COMPLETED:
        return "the handler returned"
    code = f" ({outcome.error_code})" if outcome.error_code else ""
    if status is Status.QUEUED:
        return f"attempt failed{code}, will be retried after a backoff: {outcome.error}"
    return f"{outcome.error}{code}"


def _recount(conn: Connection, requeued: list[str]) -> None:
    """Count again the unfinished dependencies of attempts that went back to QUEUED.

    An all_done task may run while a dependency it waited for is retried; if it then goes
    back to the queue, it must wait for that dependency again. FOR SHARE: a dependency
    cannot finish unseen (its count-down skipping a task that was still RUNNING) before
    this commits.
    """
    dependency = tasks.alias("dependency")
    waiting = dict.fromkeys(requeued, 0)
    for part in chunks(requeued):
        query = (
            select(deps.c.task_id, dependency.c.status)
            .join(dependency, dependency.c.id == deps.c.dependency_id)
            .where(deps.c.task_id.in_(part))
            .with_for_update(read=True, of=dependency)
        )
        for task_id, status in conn.execute(query):
            waiting[task_id] += status in UNFINISHED
    for task_id, count in waiting.items():
        queued = (tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
        conn.execute(update(tasks).where(*queued).values(pending_deps=count))


def _is_plain_success(outcome: Outcome) -> bool:
    return outcome.status is Status.COMPLETED and outcome.result is None


def _fence(claim: Claim) -> tuple[Any, ...]:
    return (
        tasks.c.id == claim.id,
        RUNNING,
        tasks.c.worker == claim.worker,
        tasks.c.attempts == claim.attempt,
    )


def backoff(base_ms: int, failures: int) -> timedelta:
    """Return the wait before the next attempt: exponential, jittered, capped."""
    delay = timedelta(milliseconds=base_ms * 2 ** min(failures - 1, 32))
    delay *= 1 + random.random() * 0.25
    return min(delay, MAX_BACKOFF)
