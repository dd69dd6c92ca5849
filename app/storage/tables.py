"""The tables as SQLAlchemy Core sees them, and conditions shared by every statement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text

from app.storage.models import SchedulerInstance, Status, Task, TaskDependency

tasks = Task.__table__
deps = TaskDependency.__table__
instances = SchedulerInstance.__table__

# Bound parameters per IN list; SQLite allows 32,766 per statement.
CHUNK = 500

# A literal condition, so that both planners can match the partial index on RUNNING rows.
RUNNING = text("tasks.status = 'RUNNING'")


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    """Yield `items` in slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def still_queued(dialect: str) -> Any:
    """Return `status = 'QUEUED'` as a filter on rows that are found by id.

    On SQLite the term is marked as filtering little: otherwise the planner prefers the
    status index and visits every QUEUED row instead of the few dependents it names.
    """
    if dialect == "sqlite":
        return text("likelihood(tasks.status = 'QUEUED', 0.99)")
    return tasks.c.status == Status.QUEUED.value
