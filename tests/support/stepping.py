"""A scheduler moved by hand: a monotonic clock and handler threads that a test steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.handlers import Registry
from app.runtime.attempt import Job
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.storage.store import Store


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


class Threads:
    """Handler threads that start at once and return when the test says so."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.live: list[Job] = []

    def start(self, job: Job) -> None:
        assert len(self.live) < self.workers, "a claim found no free thread"
        job.begin()
        self.live.append(job)

    def shutdown(self) -> None:
        return None

    def running(self) -> list[tuple[str, int]]:
        return [job.running.key for job in self.live]  # type: ignore[attr-defined]

    def finish(self, task_id: str) -> None:
        """Let the handler of `task_id` return."""
        (job,) = [j for j in self.live if j.running.claim.id == task_id]  # type: ignore[attr-defined]
        self.live.remove(job)
        job.end(job.run())


def open_scheduler(
    store: Store,
    registry: Registry,
    *,
    cap: int,
    executor: Callable[[int], Any],
    name: Callable[[], str],
    lease_s: float = 30,
    **options: Any,
) -> Scheduler:
    """Register a scheduler that starts no thread of its own: its passes are the test's
    `run_once` calls, its handler threads what `executor` makes (`Threads`, usually)."""
    scheduler = Scheduler(
        store,
        registry,
        max_concurrent=cap,
        poll_interval_s=1.0,
        lease_s=lease_s,
        metrics=Metrics(),
        executor=executor,
        name=name,
        **options,
    )
    scheduler.open()
    return scheduler
