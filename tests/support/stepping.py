"""A scheduler moved by hand: a monotonic clock and handler threads that a test steps."""

from __future__ import annotations

from app.runtime.attempt import Job


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
