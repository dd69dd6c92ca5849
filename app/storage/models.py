"""Tables: tasks, the dependency edges between them, the attempts that ended, queues,
scheduler instances and schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    event,
    false,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.statuses import Status
from app.storage import count_triggers

# SQLite only makes an INTEGER PRIMARY KEY the rowid; PostgreSQL gets a bigint.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class ResultJSON(JSON):
    """JSON kept as it was written: on SQLite declared TEXT (migration 0014).

    SQLite gives a column declared `JSON` numeric affinity, which stored a bare number's
    text as a number: `2**63` came back as a float, `3.0` as `3`.
    """

    cache_ok = True


@compiles(ResultJSON, "sqlite")
def _declared_text(_type: ResultJSON, _compiler: Any, **_kw: Any) -> str:
    return "TEXT"


# Claimable now: a delayed task joins these once promoted (its not_before cleared when due).
READY = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NULL"
# Held back by run_at or a retry backoff, ordered by when each falls due.
DELAYED = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NOT NULL"
# On PostgreSQL the scheduler's walks name these indexes by a status term that no status
# index holds (tables.status_filter), so that stale statistics cannot send them through a
# status index instead; their predicates say the same.
PG_QUEUED = "(status || '') = 'QUEUED'"
PG_READY = READY.replace("status = 'QUEUED'", PG_QUEUED)
PG_DELAYED = DELAYED.replace("status = 'QUEUED'", PG_QUEUED)
# The queue of a task that names none; its row always exists (migration 0009).
DEFAULT_QUEUE = "default"
# Tasks submitted one by one have no batch: they cost the batch+status index nothing.
IN_A_BATCH = "batch_id IS NOT NULL"
FINISHED = "finished_at IS NOT NULL"


class Task(db.Model):  # type: ignore[name-defined]
    """One unit of work and the outcome of its last attempt."""

    __tablename__ = "tasks"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED.value)
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    priority: Mapped[int] = mapped_column(SmallInteger, default=0)
    trigger_rule: Mapped[str] = mapped_column(String(16), default="all_success")
    max_attempts: Mapped[int] = mapped_column(SmallInteger, default=1)
    retry_backoff_ms: Mapped[int] = mapped_column(Integer, default=1000)
    timeout_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # As the submitter set it; the scheduler never changes it.
    run_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The earliest start a claim allows: run_at, or the end of a retry backoff if later.
    # Cleared once that time has come (promotion), so the claim only asks for NULL here.
    not_before: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Dependencies not yet terminal; the task is ready when this is 0.
    pending_deps: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Failed attempts since the task was last (re)queued by a user: the retry budget.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[Any] = mapped_column(ResultJSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The queue whose pause and limits govern its starts (a row of `queues`).
    queue: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_QUEUE, server_default=DEFAULT_QUEUE
    )
    # A user asked a RUNNING attempt to stop; its scheduler sets the handler's cancel event.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        # The scheduler's only question: the next ready tasks of a queue, best first. A
        # claim walks the part of each queue that may start tasks now, so the tasks of a
        # paused or full queue are never read.
        Index(
            "ix_tasks_ready",
            queue,
            priority.desc(),
            seq,
            sqlite_where=text(READY),
            postgresql_where=text(PG_READY),
        ),
        # The same question from an instance that runs only some types: one walk per queue
        # and type.
        Index(
            "ix_tasks_ready_type",
            queue,
            type,
            priority.desc(),
            seq,
            sqlite_where=text(READY),
            postgresql_where=text(PG_READY),
        ),
        # When the next held-back task (run_at, retry backoff) becomes due.
        Index(
            "ix_tasks_delayed",
            not_before,
            sqlite_where=text(DELAYED),
            postgresql_where=text(PG_DELAYED),
        ),
        Index(
            "ix_tasks_running",
            worker,
            sqlite_where=text("status = 'RUNNING'"),
            postgresql_where=text("status = 'RUNNING'"),
        ),
        # The list's filters, each leading an index that also serves its newest-first order.
        Index("ix_tasks_status_seq", status, seq),
        Index("ix_tasks_type_seq", type, seq),
        Index("ix_tasks_batch_seq", batch_id, seq),
        # The two pairs the dashboard asks for; without them a page of a rare pair walks
        # every task of the common half (all COMPLETED tasks, to find 100 of one type).
        # Led by the type or batch, not the status: a task's entry then moves, at each
        # change of its status, next to where it was, so a pass writes a page or two of
        # each rather than one per status it moved a task from or to.
        Index("ix_tasks_type_status_seq", type, status, seq),
        Index(
            "ix_tasks_batch_status_seq",
            batch_id,
            status,
            seq,
            sqlite_where=text(IN_A_BATCH),
            postgresql_where=text(IN_A_BATCH),
        ),
        # What pruning walks. Finished tasks only: unfinished ones, under NULL, would be
        # rewritten by every claim and finish for no reader.
        Index(
            "ix_tasks_finished_at",
            finished_at,
            sqlite_where=text(FINISHED),
            postgresql_where=text(FINISHED),
        ),
    )


class TaskDependency(db.Model):  # type: ignore[name-defined]
    """An edge: `task_id` waits for `dependency_id`."""

    __tablename__ = "task_dependencies"

    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    dependency_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    # Keeps the order the client gave, so the API shows the array it was sent.
    position: Mapped[int] = mapped_column(Integer, default=0)
    # The edge came from the graph, not the submitter: the dependency was added by the
    # completion of one of this task's dependencies (dynamic fan-out). A replay of the
    # submission compares the other edges only.
    adopted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_task_dependencies_dependency", dependency_id, task_id),)


class TaskAttempt(db.Model):  # type: ignore[name-defined]
    """An attempt that ended: written in the transaction that wrote its outcome.

    The attempt a task is running now has no row yet; the task's own row shows it.
    Removed with its task.
    """

    __tablename__ = "task_attempts"

    task_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The scheduler instance that held the attempt, and the host it ran on.
    instance: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # COMPLETED, FAILED or CANCELLED; QUEUED for an attempt put back in the queue.
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The handler's traceback when it raised (its last MAX_TRACEBACK_CHARS).
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)


class TaskEvent(db.Model):  # type: ignore[name-defined]
    """A task's state change, written in the transaction that made it: what
    `GET /api/events` streams. Pruned after EVENT_RETENTION_S.

    `seq` only grows (AUTOINCREMENT on SQLite, a sequence on PostgreSQL), so a stream
    resumes after the last one it sent. On PostgreSQL, transactions can commit out of the
    order of their numbers: a reader never steps over a missing number until every
    transaction that could still hold it has ended (app/storage/eventlog.py).
    """

    __tablename__ = "task_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime)
    task_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)

    # No index but the key: each write on the hot path would pay for it, and a stream
    # reads forward from where it stands, a few rows at a time once caught up.
    __table_args__ = {"sqlite_autoincrement": True}


class SchedulerInstance(db.Model):  # type: ignore[name-defined]
    """A running scheduler: who it is, where it runs, and when it last proved alive."""

    __tablename__ = "scheduler_instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # Kernel start time of the process, so a reused pid is not mistaken for it.
    process_start: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
    # The host's monotonic clock at that heartbeat: what an instance on the same host
    # (the same boot) judges staleness by, so no step of the wall clock fakes a death.
    heartbeat_monotonic: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="running")
    # The task types it claims, as a JSON list; NULL when it runs every type.
    task_types: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The queues it serves, as a JSON list; NULL when it serves every queue.
    queues: Mapped[str | None] = mapped_column(Text, nullable=True)
    # How many attempts it runs at once at most (MAX_CONCURRENT_TASKS).
    slots: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Its LEASE_S: it heartbeats every third of it, and is judged dead by it. NULL for
    # an instance registered before revision 0015 (judged by the judge's own).
    lease_s: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Queue(db.Model):  # type: ignore[name-defined]
    """A named queue: whether it may start tasks, and how many and how fast.

    Every queue a task names has a row (a submission adds one for a new name). The
    concurrency limit counts RUNNING tasks of the queue across every instance; the rate
    limit is a token bucket (`tokens` as of `tokens_at`) holding at most one second's
    worth, and at least one token.
    """

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_limit_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


# What a schedule's firings create: one task, or a whole batch.
SCHEDULE_KINDS = ("task", "batch")


class Schedule(db.Model):  # type: ignore[name-defined]
    """A recurring submission: when it fires next, what it creates, what it did last.

    `next_fire_at` is the fence of exactly-once firing: a firing moves it on in the same
    transaction as it stores the firing's tasks, on the condition that it still holds the
    instant being fired (and that `version` is still the one read).
    """

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(111), primary_key=True)
    cron: Mapped[str | None] = mapped_column(String(255), nullable=True)
    interval_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # "task" or "batch", and that body (without ids for a task; with them for a batch).
    kind: Mapped[str] = mapped_column(String(8))
    body: Mapped[Any] = mapped_column(JSON)
    # "skip", "last", or a number as text (how many missed firings to run).
    catch_up: Mapped[str] = mapped_column(String(8), default="skip")
    overlap: Mapped[str] = mapped_column(String(8), default="allow")
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Intervals count from here; cron expressions ignore it.
    anchor_at: Mapped[datetime] = mapped_column(DateTime)
    # The next instant to fire (naive UTC); NULL while paused.
    next_fire_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The last instant fired and the batch id of its tasks (for `overlap: skip`).
    last_fire_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_batch_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # What happened at the last instant handled: fired, skipped, missed or failed.
    last_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    fired: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    missed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every edit: a firing that read an older version does not fire.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        # What is due: the firer's only question.
        Index(
            "ix_schedules_due",
            next_fire_at,
            sqlite_where=text("next_fire_at IS NOT NULL"),
            postgresql_where=text("next_fire_at IS NOT NULL"),
        ),
    )


class TaskCount(db.Model):  # type: ignore[name-defined]
    """How many tasks of a queue have a status, as far as the folded deltas go
    (app/storage/counts.py).

    Kept by triggers on `tasks` (app/storage/count_triggers.py), never by the code.
    """

    __tablename__ = "task_counts"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class TaskCountDelta(db.Model):  # type: ignore[name-defined]
    """A change of the tasks per status not yet folded into `task_counts` (PostgreSQL;
    always empty on SQLite, whose triggers update `task_counts` directly)."""

    __tablename__ = "task_count_deltas"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigInteger)


count_triggers.attach(db.metadata)

# PostgreSQL plans a probe of the edges by one task's id from the share of the most common
# id: with one wide fan-out stored, it expects every probe to return most of the table and
# reads the whole index each time. Told that ids are mostly distinct (half as many as the
# edges), it reads the few edges of each task through the index.
EDGE_STATISTICS = tuple(
    f"ALTER TABLE task_dependencies ALTER COLUMN {column} SET (n_distinct = -0.5)"
    for column in ("task_id", "dependency_id")
)
for _statement in EDGE_STATISTICS:
    event.listen(
        TaskDependency.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql")
    )
