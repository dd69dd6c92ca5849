"""The tables as SQLAlchemy Core sees them, and conditions shared by every statement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import text

from app.storage.models import (
    Queue,
    Schedule,
    SchedulerInstance,
    Task,
    TaskAttempt,
    TaskCount,
    TaskCountDelta,
    TaskDependency,
    TaskEvent,
)

T = TypeVar("T")

tasks = Task.__table__
queues = Queue.__table__
deps = TaskDependency.__table__
task_attempts = TaskAttempt.__table__
task_events = TaskEvent.__table__
instances = SchedulerInstance.__table__
schedules = Schedule.__table__
task_counts = TaskCount.__table__
count_deltas = TaskCountDelta.__table__

# Bound parameters per IN list; SQLite allows 32,766 per statement.
CHUNK = 500

# A literal condition, so that both planners can match the partial index on RUNNING rows.
RUNNING = text("tasks.status = 'RUNNING'")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """Yield `items` in slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def weak(condition: str, dialect: str) -> str:
    """Return `condition`, marked on SQLite as one that filters out little.

    Told nothing, SQLite's planner prefers the status index for a status term and visits
    every row of that status; marked as nearly always true, the term leaves the planner the
    index the rest of the statement names: the partial ready index, ids, a time range.
    """
    return f"likelihood({condition}, 0.99)" if dialect == "sqlite" else condition


def status_filter(table: str, status: str, dialect: str) -> str:
    """Return `<table>.status = '<status>'` as a filter on rows found by id or seq, which
    no status index may serve.

    SQLite is told that the term filters out little (`weak`). PostgreSQL plans from its
    statistics, and a burst of new tasks leaves them stale: taken while every stored task
    had finished, they make QUEUED look empty and a status index the cheapest way in, so
    each scheduler pass walked every queued task (45 ms a claim at 5,000 queued). Written
    as an expression that no index holds, the term can only filter.
    """
    if dialect == "sqlite":
        return weak(f"{table}.status = '{status}'", dialect)
    return f"{unindexed_status(table, dialect)} = '{status}'"


def unindexed_status(table: str, dialect: str) -> str:
    """Return `<table>.status` as an expression no index holds on PostgreSQL (see
    `status_filter`); on SQLite the column itself, to be marked with `weak`."""
    return f"{table}.status" if dialect == "sqlite" else f"({table}.status || '')"


def still_queued(dialect: str) -> Any:
    """Return `status = 'QUEUED'` as a filter on rows that are found by id."""
    return text(weak("tasks.status = 'QUEUED'", dialect))
