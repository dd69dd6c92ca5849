"""Prometheus metrics: a registry per app, counters fed by the scheduler, gauges read at scrape.

Under prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before the
library is imported; gunicorn.conf.py does it) every process writes its values to files in
that directory and a scrape adds up the files of every process, so any process answers with
the server's totals. Otherwise the values live in the app's own registry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.statuses import Status
from app.storage import counts, database, dbfaults
from app.storage.health import schema_failure

if TYPE_CHECKING:
    from app.runtime.attempt import Running
    from app.storage.store import Claim, Outcome

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.metrics")

# The text exposition format every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "taskscheduler"
# Seconds: from a few milliseconds (simulated tasks) to an hour (the longest backoff).
# Distinct task types a process labels its counters with; the rest count as OTHER_TYPES.
# Types come from clients (any type is accepted when no handler is registered): each new
# one would be a new series for Prometheus to keep.
MAX_TYPE_LABELS = 100
OTHER_TYPES = "_other"  # no type can start with "_"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class TaskCounts:
    """A collector of tasks by status (and by queue and status), read from the database's
    counts at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        """Name the families without querying the database (called at registration)."""
        yield self._family()
        yield self._queue_family()

    def collect(self) -> Iterator[Metric]:
        """Read the tasks of every status from the counts rows; nothing if the database fails."""
        try:
            with database.read(self.engine) as conn:
                found = counts.by_queue(conn)
        except SQLAlchemyError as exc:
            fault = dbfaults.classify(exc)
            # An outage or a schema to upgrade, not a bug: one line per scrape.
            problem = fault.problem if fault is not None else schema_failure(exc, self.engine)
            if problem is None:
                log.warning("could not count tasks by status for /metrics", exc_info=True)
            else:
                log.warning("could not count tasks by status for /metrics: %s", problem)
            return
        family = self._family()
        per_queue = self._queue_family()
        by_status = {s.value: 0 for s in Status}
        for queue, statuses in sorted(found.items()):
            for status, count in statuses.items():
                by_status[status] = by_status.get(status, 0) + count
                per_queue.add_metric([queue, status], count)
        for status, count in by_status.items():
            family.add_metric([status], count)
        yield family
        yield per_queue

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks in the database by status.", labels=["status"]
        )

    @staticmethod
    def _queue_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            f"{PREFIX}_queue_tasks",
            "Tasks in the database by queue and status.",
            labels=["queue", "status"],
        )


def multiprocess() -> bool:
    """Tell whether values go to PROMETHEUS_MULTIPROC_DIR (chosen when the library loaded)."""
    chosen = bool(getattr(values.ValueClass, "_multiprocess", False))
    if not chosen and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: "
            "this process keeps its metrics to itself"
        )
    return chosen


class Buckets:
    """A histogram fed a scheduler pass's values at once: a bisect per value, one add per bucket.

    prometheus-client's Histogram takes a lock and walks its bounds for every value (and,
    in multiprocess mode, writes its file for every value); at thousands of tasks a second
    that is a measurable share of the scheduler's time. The values are the library's own,
    so in multiprocess mode they land in the shared directory like any histogram's.
    """

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        le = [floatToGoString(b) for b in (*self.bounds, float("inf"))]
        # The last bucket is beyond every bound. Stored per bucket, not cumulative.
        self._buckets = [self._value(f"{name}_bucket", ("le",), (bound,)) for bound in le]
        self._sum = self._value(f"{name}_sum", (), ())

    def _value(self, sample: str, labelnames: tuple[str, ...], labelvalues: tuple[str, ...]) -> Any:
        kind, doc = "histogram", self.documentation
        return values.ValueClass(kind, self.name, sample, labelnames, labelvalues, doc)

    def observe_all(self, observed: Iterable[float]) -> None:
        """Count each value in the first bucket whose bound is at least the value."""
        bounds = self.bounds
        counts = [0] * len(self._buckets)
        total = 0.0
        for value in observed:
            counts[bisect_left(bounds, value)] += 1
            total += value
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        if any(counts):
            self._sum.inc(total)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0.0, []
        for bound, value in zip((*self.bounds, float("inf")), self._buckets, strict=True):
            cumulative += value.get()
            buckets.append((floatToGoString(bound), cumulative))
        total = self._sum.get()
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class Metrics:
    """An app's registry and metric objects, with one method per event the app records.

    In multiprocess mode a scrape reads the shared directory instead of the registry, and
    per-process gauges say how to combine the processes: `running_tasks` adds up the live
    ones, `last_heartbeat_timestamp_seconds` takes the latest of them.
    """

    def __init__(self, engine: Engine | None = None) -> None:
        self._types: set[str] = set()
        self._types_lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess()
        # What a scrape renders: the task counts once, beside every process's values.
        self.exposed = self.registry
        if self.multiprocess:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)
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
        self.queue_wait = Buckets(
            f"{PREFIX}_task_queue_wait_seconds",
            "From a task's creation to the start of its attempt.",
            BUCKETS,
        )
        self.run_time = Buckets(
            f"{PREFIX}_task_run_seconds",
            "From an attempt's start to its outcome being recorded.",
            BUCKETS,
        )
        reg.register(self.queue_wait)
        reg.register(self.run_time)
        self.running = Gauge(
            f"{PREFIX}_running_tasks",
            "Attempts this instance is executing.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            f"{PREFIX}_waiting_requests",
            "Requests this process holds waiting for a task to end (?wait=).",
            registry=reg,
            multiprocess_mode="livesum",
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
            multiprocess_mode="livemax",
        )
        self.schedule_firings_total = Counter(
            f"{PREFIX}_schedule_firings",
            "Instants of schedules this instance handled, by outcome: fired, skipped "
            "(overlap), missed (catch_up) or failed (the tasks could not be stored).",
            ["outcome"],
            registry=reg,
        )
        self.task_actions_total = Counter(
            f"{PREFIX}_task_actions",
            "Tasks users acted on through this process, by action: cancelled, retried, "
            "edited, deleted, and batch_cancelled, batch_retried (a batch each).",
            ["action"],
            registry=reg,
        )
        self.queue_changes_total = Counter(
            f"{PREFIX}_queue_changes",
            "Changes of queues made through this process, by kind: paused, resumed, "
            "limits, deleted.",
            ["change"],
            registry=reg,
        )
        self._running_count: Callable[[], int] | None = None
        if engine is not None:
            self.exposed.register(TaskCounts(engine))

    def watch(self, running_count: Callable[[], int]) -> None:
        """Read the running-tasks gauge from `running_count` (multiprocess: at each pass)."""
        if self.multiprocess:
            # Another process answers the scrape: the value must be in this one's file.
            self._running_count = running_count
        else:
            self.running.set_function(lambda: float(running_count()))

    def submitted(self, types: Iterable[str]) -> None:
        """Count newly created tasks by type."""
        counts: dict[str, int] = {}
        for task_type in types:
            counts[task_type] = counts.get(task_type, 0) + 1
        for task_type, count in counts.items():
            self.submitted_total.labels(self._type_label(task_type)).inc(count)

    def claimed(self, claims: Sequence[Claim]) -> None:
        """Observe the queue wait of each claimed attempt; called once per scheduler pass."""
        self.queue_wait.observe_all([claim.waited_s for claim in claims])
        if self._running_count is not None:
            self.running.set(self._running_count())

    def finished(
        self,
        done: Sequence[tuple[Running, Outcome | None]],
        applied: Sequence[bool],
        now: float | None = None,
    ) -> None:
        """Count the outcomes a cycle applied; `applied` lines up with outcomes not None.

        `now` is on the clock the attempts' start times were read from.
        """
        now = time.monotonic() if now is None else now
        recorded = [(r, o) for r, o in done if o is not None]
        runs: list[float] = []
        ended: dict[tuple[Counter, str], int] = {}
        for (running, outcome), ok in zip(recorded, applied, strict=True):
            if not ok:
                continue
            runs.append(max(0.0, now - running.started))
            claim = running.claim
            if outcome.status is Status.COMPLETED:
                counter = self.completed_total
            elif outcome.status is not Status.FAILED:
                continue
            elif claim.failures + 1 < claim.max_attempts:
                counter = self.retries_total
            else:
                counter = self.failed_total
            key = (counter, claim.type)
            ended[key] = ended.get(key, 0) + 1
        self.run_time.observe_all(runs)
        # One increment per counter and type, not one per task.
        for (counter, task_type), count in ended.items():
            counter.labels(self._type_label(task_type)).inc(count)

    def _type_label(self, task_type: str) -> str:
        """The label of `task_type`: itself among the first MAX_TYPE_LABELS types seen."""
        if task_type in self._types:
            return task_type
        with self._types_lock:
            if len(self._types) < MAX_TYPE_LABELS:
                self._types.add(task_type)
                return task_type
        return OTHER_TYPES

    def recovered(self, count: int) -> None:
        """Count attempts of dead instances ended by a reap."""
        self.recovered_total.inc(count)

    def schedule_firings(self, fired: int, skipped: int, missed: int, failed: int) -> None:
        """Count the instants of schedules one firer run handled, by outcome."""
        for outcome, count in (
            ("fired", fired),
            ("skipped", skipped),
            ("missed", missed),
            ("failed", failed),
        ):
            if count:
                self.schedule_firings_total.labels(outcome).inc(count)

    def task_action(self, action: str, count: int = 1) -> None:
        """Count a user's action on tasks (or on a batch)."""
        self.task_actions_total.labels(action).inc(count)

    def queue_changed(self, change: str) -> None:
        """Count a change of a queue: its pause or limits, or its deletion."""
        self.queue_changes_total.labels(change).inc()

    def heartbeat(self) -> None:
        """Count a successful heartbeat and remember when it was."""
        self.heartbeats_total.inc()
        self.last_heartbeat.set(time.time())

    def exposition(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return generate_latest(self.exposed)
