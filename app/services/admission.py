"""What a submission must pass before it is stored: known task types, room in the queue.

The API and `flask tasks submit` both reach the database through `services.submit` and
`batch.submit_batch`, which apply these checks, so neither can skip them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.errors import QueueFull
from app.handlers import Registry
from app.statuses import Status
from app.storage import counts

if TYPE_CHECKING:
    from sqlalchemy import Connection

MAX_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class Admission:
    """The checks of one app; the default admits every type with no queue limit."""

    registry: Registry | None = None
    max_queued: int | None = None
    retry_after_s: int = 1

    @staticmethod
    def retry_after_for(polling_interval_ms: int) -> int:
        """Return a Retry-After of one polling interval, from 1 s to a minute."""
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(polling_interval_ms / 1000)))

    def check_types(self, task_types: Iterable[str]) -> None:
        """Raise `unknown_task_type` for types no handler runs."""
        if self.registry is not None:
            self.registry.check(list(task_types))

    def make_room(self, conn: Connection, born: Iterable[str]) -> None:
        """Raise `queue_full` unless new tasks born with the statuses `born` fit under the
        limit; call inside the insert's write transaction, so the count cannot change
        before the rows are committed."""
        if self.max_queued is None:
            return
        asked = sum(1 for status in born if status == Status.QUEUED.value)
        if not asked:
            return
        counts.hold_queue(conn)
        queued = counts.queued(conn)
        if queued + asked > self.max_queued:
            raise self._full(queued, asked)

    def _full(self, queued: int, asked: int) -> QueueFull:
        limit = self.max_queued
        noun = "task" if asked == 1 else "tasks"
        message = (
            f"The queue is full: {queued:,} tasks are QUEUED, the limit is {limit:,}, "
            f"and this submission adds {asked:,} {noun}; nothing was stored. "
        )
        if limit is not None and asked > limit:
            message += "A batch larger than the limit never fits: split it."
        else:
            message += f"Retry after {self.retry_after_s} s."
        details = {"limit": limit, "queued": queued, "asked": asked}
        return QueueFull(message, details, retry_after_s=self.retry_after_s)
