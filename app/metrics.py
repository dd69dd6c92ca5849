"""Prometheus metrics: a registry per app, counters fed by the scheduler, gauges read at scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from . import database
from .models import Status
from .tables import tasks

if TYPE_CHECKING:
    from .attempt import Running
    from .store import Claim, Outcome

log = logging.getLogger(__name__)

# The text exposition format every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "taskscheduler"
# Seconds: from a few milliseconds (simulated tasks) to an hour (the longest backoff).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class TaskCounts:
    """A collector of tasks by status, counted in the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        """Name the family without querying the database (called at registration)."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Count the tasks of every status with one GROUP BY; nothing if the database fails."""
        counts = dict.fromkeys(Status, 0)
        query = select(tasks.c.status, func.count()).group_by(tasks.c.status)
        try:
            with database.read(self.engine) as conn:
                for status, count in conn.execute(query):
                    counts[Status(status)] = count
        except SQLAlchemyError:
            log.warning("could not count tasks by status for /metrics", exc_info=True)
            return
        family = self._family()
        for status, count in counts.items():
            family.add_metric([status.value], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks in the database by status.", labels=["status"]
        )


class Metrics:
    """An app's registry and metric objects, with one method per event the app records."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.submitted_total = Counter(
            f"{PREFIX}_tasks_submitted", "Tasks created by submissions.", ["type"], registry=reg
        )
        self.completed_total = Counter(
            f"{PREFIX}_tasks_completed", "Attempts that completed.", ["type"], registry=reg
        )
        self.failed_total = Counter(
            f"{PREFIX}_tasks_failed", "Attempts that failed for good.", ["type"], registry=reg
        )
        self.retries_total = Counter(
            f"{PREFIX}_task_retries", "Failed attempts queued to run again.", ["type"], registry=reg
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_task_queue_wait_seconds",
            "From a task's creation to the start of its attempt.",
            buckets=BUCKETS,
            registry=reg,
        )
        self.run_time = Histogram(
            f"{PREFIX}_task_run_seconds",
            "From an attempt's start to its outcome being recorded.",
            buckets=BUCKETS,
            registry=reg,
        )
        self.running = Gauge(
            f"{PREFIX}_running_tasks", "Attempts this instance is executing.", registry=reg
        )
        self.recovered_total = Counter(
            f"{PREFIX}_recovered_attempts",
            "Attempts of dead instances this instance ended as interrupted.",
            registry=reg,
        )
        self.heartbeats_total = Counter(
            f"{PREFIX}_scheduler_heartbeats", "Heartbeats this instance wrote.", registry=reg
        )
        self.last_heartbeat = Gauge(
            f"{PREFIX}_scheduler_last_heartbeat_timestamp_seconds",
            "Unix time of this instance's last heartbeat.",
            registry=reg,
        )
        if engine is not None:
            reg.register(TaskCounts(engine))

    def watch(self, running_count: Callable[[], int]) -> None:
        """Read the running-tasks gauge from `running_count` at each scrape."""
        self.running.set_function(lambda: float(running_count()))

    def submitted(self, types: Iterable[str]) -> None:
        """Count newly created tasks by type."""
        for task_type in types:
            self.submitted_total.labels(task_type).inc()

    def claimed(self, claims: Sequence[Claim]) -> None:
        """Observe the queue wait of each claimed attempt."""
        for claim in claims:
            self.queue_wait.observe(claim.waited_s)

    def finished(
        self, done: Sequence[tuple[Running, Outcome | None]], applied: Sequence[bool]
    ) -> None:
        """Count the outcomes a cycle applied; `applied` lines up with outcomes not None."""
        now = time.monotonic()
        recorded = [(r, o) for r, o in done if o is not None]
        for (running, outcome), ok in zip(recorded, applied, strict=True):
            if not ok:
                continue
            claim = running.claim
            self.run_time.observe(max(0.0, now - running.started))
            if outcome.status is Status.COMPLETED:
                self.completed_total.labels(claim.type).inc()
            elif outcome.status is Status.FAILED:
                if claim.failures + 1 < claim.max_attempts:
                    self.retries_total.labels(claim.type).inc()
                else:
                    self.failed_total.labels(claim.type).inc()

    def recovered(self, count: int) -> None:
        """Count attempts of dead instances ended by a reap."""
        self.recovered_total.inc(count)

    def heartbeat(self) -> None:
        """Count a successful heartbeat and remember when it was."""
        self.heartbeats_total.inc()
        self.last_heartbeat.set(time.time())

    def exposition(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return generate_latest(self.registry)
