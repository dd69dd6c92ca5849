"""The SQL that must be exact: claim, fenced finish, requeue, heartbeat and reap."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, update

from . import database
from .database import utcnow
from .models import Status
from .notify import announce
from .propagation import settle
from .tables import READY, READY_SQLITE, RUNNING, instances, tasks

# Re-exported: older callers import these from here.
from .tables import chunks as chunks
from .tables import deps as deps

MAX_BACKOFF = timedelta(hours=1)


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


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    status: Status
    result: Any = None
    error: str | None = None
    error_code: str | None = None


class Store:
    """The task table's state transitions, each one transaction with a fence."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, worker: str, limit: int, now: datetime | None = None) -> list[Claim]:
        """Move up to `limit` ready tasks to RUNNING for `worker`, best first."""
        if limit <= 0:
            return []
        with database.write(self.engine) as conn:
            # Only a registered instance claims; FOR SHARE holds off a reaper's delete
            # until this claim commits, so nothing is claimed under a dead identity.
            member = select(instances.c.id).where(instances.c.id == worker)
            if conn.execute(member.with_for_update(read=True)).first() is None:
                raise NotRegistered(worker)
            # Read the clock inside the transaction, once the write lock is held, so a
            # start is never stamped before the finish that made the task ready.
            return self._claim(conn, worker, limit, now or utcnow())

    def _claim(self, conn: Connection, worker: str, limit: int, now: datetime) -> list[Claim]:
        # A materialized CTE: as `seq IN (subquery)`, PostgreSQL may rescan the locking
        # subquery once per row and so claim more than `limit` tasks.
        ready = ready_query(conn.dialect.name, limit, now).cte("ready").prefix_with("MATERIALIZED")
        stmt = (
            update(tasks)
            .where(tasks.c.seq == ready.c.seq, READY)
            .values(
                status=Status.RUNNING.value,
                attempts=tasks.c.attempts + 1,
                worker=worker,
                started_at=stamp(conn, now),
                finished_at=None,
                updated_at=stamp(conn, now),
                result=None,
                error=None,
                error_code=None,
            )
            .returning(
                tasks.c.seq,
                tasks.c.id,
                tasks.c.type,
                tasks.c.duration_ms,
                tasks.c.payload,
                tasks.c.attempts,
                tasks.c.failures,
                tasks.c.max_attempts,
                tasks.c.retry_backoff_ms,
                tasks.c.timeout_ms,
                tasks.c.priority,
            )
        )
        rows = sorted(conn.execute(stmt).all(), key=lambda r: (-r.priority, r.seq))
        return [
            Claim(
                id=r.id,
                type=r.type,
                duration_ms=r.duration_ms,
                payload=r.payload,
                attempt=r.attempts,
                worker=worker,
                failures=r.failures,
                max_attempts=r.max_attempts,
                retry_backoff_ms=r.retry_backoff_ms,
                timeout_ms=r.timeout_ms,
            )
            for r in rows
        ]

    def finish(self, claim: Claim, outcome: Outcome, now: datetime | None = None) -> bool:
        """Record how an attempt ended, if the row still holds this attempt."""
        with database.write(self.engine) as conn:
            return self._end_attempt(conn, claim, outcome, now or utcnow())

    def requeue(self, claim: Claim) -> bool:
        """Put a running attempt back to QUEUED without spending the retry budget."""
        with database.write(self.engine) as conn:
            stmt = (
                update(tasks)
                .where(*_fence(claim))
                .values(status=Status.QUEUED.value, updated_at=utcnow(), finished_at=None)
            )
            return conn.execute(stmt).rowcount == 1

    def _end_attempt(self, conn: Connection, claim: Claim, outcome: Outcome, now: datetime) -> bool:
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
            return False
        if status.terminal and settle(conn, {claim.id: status}, now):
            announce(conn)
        return True

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

    def next_run_at(self, now: datetime) -> datetime | None:
        """Return the earliest future time a ready task is held back to (run_at, backoff)."""
        with database.read(self.engine) as conn:
            ready = READY_SQLITE if conn.dialect.name == "sqlite" else READY
            query = select(func.min(tasks.c.run_at)).where(ready, tasks.c.run_at > now)
            return conn.execute(query).scalar()

    def register(self, row: dict[str, Any]) -> None:
        """Record a new scheduler instance."""
        with database.write(self.engine) as conn:
            conn.execute(insert(instances).values(**row))

    def database_now(self) -> datetime:
        """Return the database's current UTC time: the one clock every instance shares."""
        if self.engine.dialect.name != "postgresql":
            return utcnow()  # SQLite lives on this host: its clock is ours
        with database.read(self.engine) as conn:
            moment: datetime = conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()
            return moment

    def heartbeat(self, instance_id: str) -> bool:
        """Prove `instance_id` alive, in database time; False when it was declared dead."""
        with database.write(self.engine) as conn:
            stmt = (
                update(instances)
                .where(instances.c.id == instance_id)
                .values(heartbeat_at=stamp(conn, utcnow()))
            )
            return conn.execute(stmt).rowcount == 1

    def set_state(self, instance_id: str, state: str) -> None:
        """Record what an instance is doing (running, draining)."""
        stmt = update(instances).where(instances.c.id == instance_id).values(state=state)
        with database.write(self.engine) as conn:
            conn.execute(stmt)

    def deregister(self, instance_id: str) -> None:
        """Remove an instance that stopped cleanly."""
        with database.write(self.engine) as conn:
            conn.execute(delete(instances).where(instances.c.id == instance_id))

    def instances(self) -> list[Any]:
        """Return every registered scheduler instance."""
        with database.read(self.engine) as conn:
            return list(conn.execute(select(instances)).all())

    def orphan_workers(self) -> list[str]:
        """Return workers holding RUNNING tasks that no registered instance owns."""
        known = select(instances.c.id)
        stmt = select(tasks.c.worker).where(RUNNING, tasks.c.worker.not_in(known)).distinct()
        with database.read(self.engine) as conn:
            return [w for (w,) in conn.execute(stmt) if w is not None]

    def reap(self, worker: str, reason: str, stale_before: datetime | None = None) -> list[str]:
        """Forget a dead instance and end every attempt it holds as interrupted.

        With `stale_before`, only if its heartbeat is still older than that when the
        transaction holds its row: an instance that heartbeated meanwhile is alive.
        """
        query = select(
            tasks.c.id,
            tasks.c.attempts,
            tasks.c.failures,
            tasks.c.max_attempts,
            tasks.c.retry_backoff_ms,
        ).where(RUNNING, tasks.c.worker == worker)
        reaped: list[str] = []
        forget = delete(instances).where(instances.c.id == worker)
        if stale_before is not None:
            forget = forget.where(instances.c.heartbeat_at < stale_before)
        with database.write(self.engine) as conn:
            # Deleting the row first takes its lock: a claim by that instance either
            # committed before (and is ended below) or finds it gone (and claims nothing).
            if conn.execute(forget).rowcount == 0 and stale_before is not None:
                return []
            now = utcnow()
            for row in conn.execute(query).all():
                claim = Claim(
                    id=row.id,
                    type="",
                    duration_ms=0,
                    payload=None,
                    attempt=row.attempts,
                    worker=worker,
                    failures=row.failures,
                    max_attempts=row.max_attempts,
                    retry_backoff_ms=row.retry_backoff_ms,
                )
                error = f"Attempt {row.attempts} was interrupted: {reason}."
                outcome = Outcome(Status.FAILED, error=error, error_code="interrupted")
                if self._end_attempt(conn, claim, outcome, now):
                    reaped.append(row.id)
        return reaped


def ready_query(dialect: str, limit: int, now: datetime) -> Select[Any]:
    """Select the next `limit` ready tasks, best first, locking them on PostgreSQL."""
    return (
        select(tasks.c.seq)
        .where(
            READY_SQLITE if dialect == "sqlite" else READY,
            (tasks.c.run_at.is_(None)) | (tasks.c.run_at <= now),
        )
        .order_by(tasks.c.priority.desc(), tasks.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def stamp(conn: Connection, now: datetime) -> Any:
    """Return the time to record for a state change, read while the row is written.

    A task's start must never be stamped before the finish that made it ready. SQLite
    serialises writers, so `now`, read once the write lock is held, is exact. PostgreSQL
    does not: the database clock, read as the statement writes the row (after its snapshot
    saw the finish committed), is.
    """
    if conn.dialect.name == "postgresql":
        return func.timezone("UTC", func.clock_timestamp())
    return now


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
