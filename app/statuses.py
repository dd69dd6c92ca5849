"""Where a task is in its life, and the groups of statuses that rules speak of."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a task is in its life; the last four never change again on their own."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


TERMINAL = tuple(s.value for s in Status if s.terminal)
FAILED_LIKE = (Status.FAILED.value, Status.UPSTREAM_FAILED.value)
UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)
# Ended without completing: an all_success dependent of such a task never runs.
BLOCKING = (*FAILED_LIKE, Status.CANCELLED.value)
# What a user's cancel accepts; what a user's retry accepts, when no dependency stops it.
CANCELLABLE = UNFINISHED
RETRYABLE = BLOCKING
