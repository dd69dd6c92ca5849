"""Scale-out: several scheduler processes on one database, proved by a ledger of what ran.

Every test starts real processes (`flask db upgrade`, N x `flask scheduler run`, an API-only
gunicorn, or gunicorn with a scheduler per worker) on its own PostgreSQL schema or SQLite
file. The `ledger` task type (tests/support/ledger_handlers.py) appends a start and an end line per
attempt to a file shared by every process; the checks compare it with the database:
exactly-once execution, dependencies before dependents, the per-instance concurrency cap,
crash recovery (SIGKILL) and fencing of a paused instance (SIGSTOP past its lease). The last
test pauses an instance inside a transaction: the others must neither stall nor wait for it.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, create_engine, text

from tests.support.apps import postgres_schema
from tests.support.servers import Launcher, Server, database_url, poll, run_flask

HANDLERS = "tests.support.ledger_handlers"
# One statement, so one snapshot: what is left, and who holds what in RUNNING.
UNFINISHED_SQL = (
    "SELECT status, worker, count(*) FROM tasks WHERE status IN ('QUEUED', 'RUNNING')"
    " GROUP BY status, worker"
)
# RUNNING rows whose worker is not a registered instance: a claim under a dead identity.
UNREGISTERED_SQL = (
    "SELECT id, worker FROM tasks WHERE status = 'RUNNING'"
    " AND worker NOT IN (SELECT id FROM scheduler_instances)"
)


# -- the ledger ---------------------------------------------------------------------------


@dataclass
class Run:
    """One attempt as the ledger saw it: who ran it, from when until when (ns)."""

    task_id: str
    attempt: int
    pid: int
    start: int
    end: int | None = None


def read_ledger(path: Path) -> list[tuple[str, int, int, str, int]]:
    """Return the ledger's lines as (task_id, attempt, pid, event, wall_time_ns)."""
    if not path.exists():
        return []
    lines = []
    # A line being appended right now may be read in part: it has no newline yet.
    for raw in path.read_text().split("\n")[:-1]:
        task_id, attempt, pid, event, at = raw.split()
        assert event in ("start", "end"), raw
        lines.append((task_id, int(attempt), int(pid), event, int(at)))
    return lines


def read_runs(path: Path) -> list[Run]:
    """Pair the ledger's start and end lines into runs, one per (task, attempt, pid)."""
    runs: dict[tuple[str, int, int], Run] = {}
    for task_id, attempt, pid, event, at in read_ledger(path):
        key = (task_id, attempt, pid)
        if event == "start":
            assert key not in runs, f"{key} started twice"
            runs[key] = Run(task_id, attempt, pid, at)
        else:
            assert key in runs and runs[key].end is None, f"{key} ended without a start"
            runs[key].end = at
    return list(runs.values())


def by_task(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Group runs by task."""
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run.task_id].append(run)
    return grouped


def max_running(runs: Iterable[Run]) -> int:
    """Return the most runs open at once; an end at the same instant as a start comes first."""
    events = []
    for run in runs:
        events.append((run.start, 1))
        if run.end is not None:
            events.append((run.end, -1))
    most = current = 0
    for _at, step in sorted(events):
        current += step
        most = max(most, current)
    return most


def assert_exactly_once(runs: list[Run], ids: Iterable[str]) -> None:
    """Every task ran once: one attempt, one start and one end, in one process."""
    grouped = by_task(runs)
    expected = set(ids)
    assert set(grouped) == expected, sorted(set(grouped) ^ expected)[:20]
    twice = {t: r for t, r in grouped.items() if len(r) != 1}
    assert not twice, list(twice.items())[:5]
    unfinished = [r[0] for r in grouped.values() if r[0].end is None or r[0].attempt != 1]
    assert not unfinished, unfinished[:5]


def assert_cap_per_process(runs: list[Run], cap: int) -> dict[int, int]:
    """No process ever ran more than `cap` attempts at once; return the count per pid."""
    per_pid: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        per_pid[run.pid].append(run)
    peaks = {pid: max_running(mine) for pid, mine in per_pid.items()}
    assert all(peak <= cap for peak in peaks.values()), peaks
    return {pid: len(mine) for pid, mine in per_pid.items()}


def worker_pid(worker: str) -> int:
    """Return the pid in an instance id (`host-pid-random`)."""
    return int(worker.rsplit("-", 2)[1])


# -- tasks ----------------------------------------------------------------------------------


def ledger_task(task_id: str, duration_ms: int, deps: Iterable[str] = (), **fields: Any) -> dict:
    """Return the submission of one ledger task."""
    body = {"id": task_id, "type": "ledger", "duration_ms": duration_ms}
    return {**body, "dependencies": list(deps), **fields}


def independent(rng: random.Random, count: int, low: int, high: int) -> list[dict]:
    """Return `count` tasks without dependencies lasting `low`..`high` ms."""
    return [ledger_task(f"ind-{i}", rng.randint(low, high)) for i in range(count)]


def layered_dag(rng: random.Random, layers: int, width: int) -> list[dict]:
    """Return a DAG of `layers` x `width` tasks; each depends on 1-3 of the layer before.

    Fan-in is 1-3; fan-out is whatever the random picks make it (0 to many).
    """
    graph: list[dict] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"dag-{layer}-{i}" for i in range(width)]
        for task_id in current:
            deps = rng.sample(previous, rng.randint(1, 3)) if previous else []
            graph.append(ledger_task(task_id, rng.randint(1, 5), deps))
        previous = current
    return graph


def assert_dependencies_first(runs: list[Run], graph: list[dict]) -> None:
    """No task started before every one of its dependencies had ended."""
    run_of = {run.task_id: run for run in runs}
    early = [
        (task["id"], dep)
        for task in graph
        for dep in task["dependencies"]
        if run_of[task["id"]].start < (run_of[dep].end or 0)
    ]
    assert not early, early[:10]


def assert_all_completed_once(found: dict[str, dict[str, Any]], ids: Iterable[str]) -> None:
    """Every task is COMPLETED after one attempt."""
    expected = set(ids)
    assert set(found) == expected, sorted(set(found) ^ expected)[:20]
    wrong = [brief(t) for t in found.values() if t["status"] != "COMPLETED" or t["attempts"] != 1]
    assert not wrong, f"{len(wrong)} not COMPLETED in one attempt: {wrong[:5]}"


def brief(task: dict[str, Any]) -> dict[str, Any]:
    """Return the fields of a task that the checks are about."""
    keys = ("id", "status", "attempts", "max_attempts", "worker", "error_code", "error")
    return {key: task.get(key) for key in keys}


# -- processes ------------------------------------------------------------------------------


class Cluster:
    """One test's database, ledger and processes."""

    def __init__(self, db: Path | str, directory: Path) -> None:
        self.db = db
        self.ledger = directory / "ledger.txt"
        self.launcher = Launcher(directory)
        self.engine: Engine = create_engine(database_url(db), pool_size=1)
        # The most RUNNING rows each instance was seen holding by `wait_finished`.
        self.peak_running: Counter[str] = Counter()

    def settings(self, **overrides: str) -> dict[str, str]:
        """Return the settings every process of the test shares, with `overrides`."""
        base = {
            "TASK_HANDLERS": HANDLERS,
            "LEDGER_PATH": str(self.ledger),
            "POLLING_INTERVAL": "200",
            "SHUTDOWN_GRACE_S": "5",
        }
        return {**base, **overrides}

    def migrate(self) -> None:
        """Run `flask db upgrade` once."""
        done = run_flask(self.db, "db", "upgrade")
        assert done.returncode == 0, done.stdout + done.stderr

    def api(self) -> Server:
        """Start an API-only gunicorn: it submits and reads, and runs nothing."""
        settings = self.settings(SCHEDULER_ENABLED="false")
        return self.launcher.gunicorn(self.db, ready="disabled", **settings)

    def schedulers(self, count: int, **settings: str) -> list[Server]:
        """Start `count` copies of `flask scheduler run` and wait until each one runs."""
        started = self.launcher.schedulers(self.db, count, **self.settings(**settings))
        self.wait_instances(count)
        return started

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Run one query on the database directly."""
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def wait_instances(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` scheduler instances are registered."""

        def registered() -> bool:
            return self.query("SELECT count(*) FROM scheduler_instances")[0][0] == count

        poll(registered, timeout, f"{count} registered scheduler instances")

    def wait_finished(self, timeout: float) -> None:
        """Wait until no task is QUEUED or RUNNING, sampling RUNNING rows per instance.

        The ledger shows how many handlers ran at once; the samples show how many tasks
        each instance held in RUNNING, which the cap bounds too (a claimed task waiting
        for a thread is RUNNING without a ledger line).
        """

        def finished() -> bool:
            left = self.query(UNFINISHED_SQL)
            for status, worker, count in left:
                if status == "RUNNING":
                    self.peak_running[worker] = max(self.peak_running[worker], count)
            return not left

        poll(finished, timeout, "every task to end", 0.02)

    def assert_cap_held(self, cap: int) -> None:
        """No instance was seen holding more than `cap` tasks in RUNNING."""
        assert self.peak_running, "no RUNNING task was ever sampled"
        peak = max(self.peak_running.values())
        assert peak <= cap, f"RUNNING per instance peaked at {dict(self.peak_running)}; cap {cap}"

    def runs(self) -> list[Run]:
        """Return the ledger's runs so far."""
        return read_runs(self.ledger)

    def close(self) -> None:
        """Kill every process (printing its log) and let go of the database."""
        try:
            self.launcher.close()
        finally:
            self.engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """Return the URL of a fresh PostgreSQL schema (skipped without TEST_DATABASE_URL)."""
    yield from postgres_schema()


@pytest.fixture
def pg(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Return a cluster on a migrated PostgreSQL schema; its processes die before the schema."""
    cluster = Cluster(pg_url, tmp_path)
    try:
        cluster.migrate()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Cluster]:
    """Return a cluster on a migrated SQLite file."""
    cluster = Cluster(tmp_path / "tasks.db", tmp_path)
    try:
        cluster.migrate()
        yield cluster
    finally:
        cluster.close()


# -- a. three instances, thousands of tasks, each once ---------------------------------------


@pytest.mark.postgres
def test_three_instances_run_each_task_exactly_once(pg: Cluster) -> None:
    cap = 4
    schedulers = pg.schedulers(3, MAX_CONCURRENT_TASKS=str(cap), LEASE_S="10")
    api = pg.api()
    rng = random.Random(5000)
    graph = layered_dag(rng, layers=20, width=100)
    loose = independent(rng, 3000, 1, 5)
    api.submit_batch(graph)
    for start in range(0, len(loose), 1000):
        api.submit_batch(loose[start : start + 1000])
    ids = [t["id"] for t in graph + loose]

    pg.wait_finished(timeout=90)

    found = api.all_tasks()
    assert_all_completed_once(found, ids)
    runs = pg.runs()
    assert_exactly_once(runs, ids)
    assert_dependencies_first(runs, graph)
    counts = assert_cap_per_process(runs, cap)
    pg.assert_cap_held(cap)
    assert set(counts) == {s.proc.pid for s in schedulers}, counts
    # The database names the process the ledger saw.
    run_of = {run.task_id: run for run in runs}
    moved = [brief(t) for t in found.values() if worker_pid(t["worker"]) != run_of[t["id"]].pid]
    assert not moved, moved[:5]
    for server in schedulers:
        server.assert_alive()


# -- b. SIGKILL one instance while it runs tasks ----------------------------------------------

KILL_CAP = 3
# The tasks last 1.5-2 s; an instance is killed while every one of its slots holds a task
# started less than a second before, so none of them can end in between.
KILL_MARGIN_NS = 1_000_000_000


def victim_with_open_runs(
    cluster: Cluster, schedulers: list[Server], max_attempts: dict[str, int]
) -> tuple[Server, list[Run]] | None:
    """Return an instance whose slots are all busy with fresh tasks of both budgets."""
    runs = cluster.runs()
    now = time.time_ns()
    for server in schedulers:
        running = [r for r in runs if r.pid == server.proc.pid and r.end is None]
        budgets = {max_attempts[r.task_id] for r in running}
        fresh = running and now - min(r.start for r in running) < KILL_MARGIN_NS
        if len(running) == KILL_CAP and fresh and budgets == {1, 2}:
            return server, running
    return None


@pytest.mark.postgres
def test_sigkill_of_one_instance_retries_or_fails_its_running_tasks(pg: Cluster) -> None:
    schedulers = pg.schedulers(3, MAX_CONCURRENT_TASKS=str(KILL_CAP), LEASE_S="3")
    api = pg.api()
    rng = random.Random(9)
    graph = [
        ledger_task(f"k-{i}", rng.randint(1500, 2000), max_attempts=1 + i % 2, retry_backoff_ms=0)
        for i in range(24)
    ]
    max_attempts = {t["id"]: t["max_attempts"] for t in graph}
    api.submit_batch(graph)

    victim, running = poll(
        lambda: victim_with_open_runs(pg, schedulers, max_attempts),
        15,
        "an instance running fresh tasks in every slot",
        0.01,
    )
    victim.signal_group(signal.SIGKILL)
    assert victim.wait_exit(10) == -signal.SIGKILL
    pg.wait_finished(timeout=30)

    pg.assert_cap_held(KILL_CAP)
    found = api.all_tasks()
    grouped = by_task(pg.runs())
    killed = {r.task_id for r in grouped_open(grouped, victim.proc.pid)}
    assert killed == {r.task_id for r in running}
    for task_id in killed:
        assert_interrupted(found[task_id], grouped[task_id], victim.proc.pid)
    others = set(found) - killed
    assert_all_completed_once({t: found[t] for t in others}, others)
    assert_exactly_once([r for t in others for r in grouped[t]], others)
    for server in schedulers:
        if server is not victim:
            server.assert_alive()


def grouped_open(grouped: dict[str, list[Run]], pid: int) -> list[Run]:
    """Return the runs of `pid` that never ended."""
    return [r for runs in grouped.values() for r in runs if r.pid == pid and r.end is None]


def assert_interrupted(task: dict[str, Any], runs: list[Run], dead_pid: int) -> None:
    """A task the dead instance was running: run again if its budget allows, else FAILED."""
    first = [r for r in runs if r.attempt == 1]
    assert len(first) == 1 and first[0].pid == dead_pid and first[0].end is None, runs
    if task["max_attempts"] == 2:
        assert task["status"] == "COMPLETED" and task["attempts"] == 2, task
        assert worker_pid(task["worker"]) != dead_pid, task
        (second,) = [r for r in runs if r.attempt == 2]
        assert second.pid == worker_pid(task["worker"]) and second.end is not None, runs
        assert len(runs) == 2, runs
    else:
        assert task["status"] == "FAILED" and task["error_code"] == "interrupted", task
        assert task["attempts"] == 1 and worker_pid(task["worker"]) == dead_pid, task
        assert len(runs) == 1, runs


# -- c. SIGSTOP past the lease: another instance takes over; the stale write changes nothing --

LEASE_S = 3
# Both run on the paused instance. DONE's re-run completes while it is still stopped; when
# it resumes, OVERLAP's re-run is still RUNNING on the other instance, so the stale write
# meets a row held by a newer attempt (the fence on worker and attempt, not only status).
DONE_MS = 2000
OVERLAP_MS = 7000


@pytest.mark.postgres
def test_a_paused_instance_is_replaced_and_its_late_writes_refused(pg: Cluster) -> None:
    settings = {"MAX_CONCURRENT_TASKS": "2", "LEASE_S": str(LEASE_S)}
    (paused,) = pg.schedulers(1, **settings)
    api = pg.api()
    retried = {"max_attempts": 2, "retry_backoff_ms": 0}
    api.submit_batch(
        [ledger_task("done", DONE_MS, **retried), ledger_task("overlap", OVERLAP_MS, **retried)]
    )
    poll(lambda: len(pg.runs()) == 2, 10, "both long tasks to start")

    # Stopped just after a heartbeat, it is found dead a whole lease later: OVERLAP's re-run
    # then starts LEASE_S after the stale attempt, which ends (and writes) well before it.
    wait_for_heartbeat(pg, paused)
    paused.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        (other,) = pg.launcher.schedulers(pg.db, 1, **pg.settings(**settings))
        # The lease expires; the other instance reaps both attempts and runs them again.
        done = api.wait_status("done", "COMPLETED", timeout=LEASE_S + DONE_MS / 1000 + 15)
        assert time.monotonic() - stopped_at > LEASE_S
        assert api.task("overlap")["status"] == "RUNNING"
    finally:
        paused.signal(signal.SIGCONT)
    assert_rerun(done, pg.runs(), paused.proc.pid, other.proc.pid)

    # Resumed, the stale handlers end; their outcomes are refused by the row, or discarded
    # once the instance sees that it was declared dead, and change nothing.
    paused.wait_log("late outcome of task done attempt 1", timeout=15)
    assert api.task("done") == done
    paused.wait_log("late outcome of task overlap attempt 1", timeout=15)
    overlap = api.task("overlap")
    assert overlap["status"] == "RUNNING" and overlap["attempts"] == 2, overlap
    assert worker_pid(overlap["worker"]) == other.proc.pid, overlap
    overlap = api.wait_status("overlap", "COMPLETED", timeout=OVERLAP_MS / 1000 + 10)
    runs = pg.runs()
    assert_rerun(overlap, runs, paused.proc.pid, other.proc.pid)
    stale = [r for r in runs if r.pid == paused.proc.pid]
    assert len(stale) == 2 and all(r.end is not None for r in stale), stale  # ran to the end

    assert_keeps_working(pg, api, paused, other)


def wait_for_heartbeat(cluster: Cluster, server: Server) -> None:
    """Wait until the instance in process `server` has just heartbeated."""
    sql = "SELECT heartbeat_at FROM scheduler_instances WHERE pid = :pid"
    (before,) = cluster.query(sql, pid=server.proc.pid)
    poll(lambda: cluster.query(sql, pid=server.proc.pid) != [before], LEASE_S, "a heartbeat", 0.01)


def assert_rerun(task: dict[str, Any], runs: list[Run], stale_pid: int, new_pid: int) -> None:
    """The task completed in attempt 2 on `new_pid`; attempt 1 ran on `stale_pid`."""
    assert task["status"] == "COMPLETED" and task["attempts"] == 2, task
    assert worker_pid(task["worker"]) == new_pid, task
    mine = {(r.attempt, r.pid): r for r in runs if r.task_id == task["id"]}
    assert set(mine) <= {(1, stale_pid), (2, new_pid)} and (2, new_pid) in mine, mine
    assert mine[(2, new_pid)].end is not None, mine


def assert_keeps_working(cluster: Cluster, api: Server, paused: Server, other: Server) -> None:
    """The resumed instance claims again, under a registered identity, and finishes."""
    api.submit_batch([ledger_task(f"after-{i}", 300) for i in range(12)])
    ids = [f"after-{i}" for i in range(12)]

    def done() -> bool:
        unregistered = cluster.query(UNREGISTERED_SQL)
        assert not unregistered, f"RUNNING under an unregistered identity: {unregistered}"
        return not cluster.query(UNFINISHED_SQL)

    poll(done, 30, "the tasks submitted after the pause")
    found = api.all_tasks()
    assert_all_completed_once({t: found[t] for t in ids}, ids)
    runs = [r for r in cluster.runs() if r.task_id.startswith("after-")]
    assert_exactly_once(runs, ids)
    assert paused.proc.pid in {r.pid for r in runs}, "the resumed instance ran nothing"
    registered = {row[0] for row in cluster.query("SELECT id FROM scheduler_instances")}
    assert {found[t]["worker"] for t in ids} <= registered
    paused.assert_alive()
    other.assert_alive()


# -- d. gunicorn with a scheduler per worker -------------------------------------------------


@pytest.mark.postgres
def test_gunicorn_workers_each_scheduling_run_each_task_once(pg: Cluster) -> None:
    cap = 3
    server = pg.launcher.gunicorn(
        pg.db,
        **pg.settings(WEB_CONCURRENCY="4", SCHEDULER_ENABLED="true", MAX_CONCURRENT_TASKS="3"),
    )
    pg.wait_instances(4)
    loose = independent(random.Random(2000), 2000, 1, 5)
    server.submit_batch(loose)
    ids = [t["id"] for t in loose]

    pg.wait_finished(timeout=40)

    assert_all_completed_once(server.all_tasks(), ids)
    runs = pg.runs()
    assert_exactly_once(runs, ids)
    counts = assert_cap_per_process(runs, cap)
    pg.assert_cap_held(cap)
    assert len(counts) == 4 and server.proc.pid not in counts, counts


def test_sqlite_gunicorn_plus_flask_scheduler_run_each_task_once(lite: Cluster) -> None:
    cap = 3
    server = lite.launcher.gunicorn(lite.db, **lite.settings(MAX_CONCURRENT_TASKS=str(cap)))
    (extra,) = lite.launcher.schedulers(lite.db, 1, **lite.settings(MAX_CONCURRENT_TASKS="3"))
    lite.wait_instances(2)
    # Long enough that the sampling of RUNNING rows (every 20 ms) sees some: 500 tasks
    # of 1-5 ms once all ended between two samples (CI, on this machine).
    loose = independent(random.Random(500), 300, 10, 30)
    server.submit_batch(loose)
    ids = [t["id"] for t in loose]

    lite.wait_finished(timeout=40)

    assert_all_completed_once(server.all_tasks(), ids)
    runs = lite.runs()
    assert_exactly_once(runs, ids)
    counts = assert_cap_per_process(runs, cap)
    lite.assert_cap_held(cap)
    assert len(counts) == 2 and extra.proc.pid in counts, counts


# -- e. paused inside a transaction: the others keep working and recover its tasks ----------

PROBE_DEADLINE_S = 5.0
BLOCKED_SQL = "SELECT pid FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))"
STATE_SQL = "SELECT state FROM pg_stat_activity WHERE pid = :pid"
HEARTBEAT_AGE_SQL = (
    "SELECT extract(epoch FROM timezone('UTC', now()) - heartbeat_at)"
    " FROM scheduler_instances WHERE pid = :pid"
)


def pause_holding_its_row(cluster: Cluster, paused: Server) -> None:
    """SIGSTOP `paused` inside one of its transactions on its own scheduler_instances row.

    A session locks the row first, so the instance's next heartbeat (or claim) waits on
    it; the instance is stopped, the lock released: the statement then completes in the
    server and the transaction stays open, holding the row, for as long as it is stopped.
    """
    with cluster.engine.connect() as holder:
        me = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        lock = "SELECT 1 FROM scheduler_instances WHERE pid = :pid FOR UPDATE"
        holder.execute(text(lock), {"pid": paused.proc.pid})
        blocked = poll(lambda: cluster.query(BLOCKED_SQL, holder=me), 10, "a blocked statement")
        paused.signal(signal.SIGSTOP)
        holder.commit()
    backend = blocked[0][0]
    states = ("idle in transaction",)
    poll(lambda: cluster.query(STATE_SQL, pid=backend) == [states], 10, "the paused transaction")


@pytest.mark.postgres
def test_an_instance_paused_inside_a_transaction_is_recovered_without_stalling_the_others(
    pg: Cluster,
) -> None:
    settings = {"MAX_CONCURRENT_TASKS": "2", "LEASE_S": str(LEASE_S)}
    (paused,) = pg.schedulers(1, **settings)
    api = pg.api()
    api.submit_batch([ledger_task("long", 8000)])
    api.wait_status("long", "RUNNING")
    pause_holding_its_row(pg, paused)
    try:
        (other,) = pg.launcher.schedulers(pg.db, 1, **pg.settings(**settings))

        def lease_expired() -> bool:
            age = pg.query(HEARTBEAT_AGE_SQL, pid=paused.proc.pid)
            # Long enough that the other has tried to reap it (or has already reaped it).
            return not age or float(age[0][0]) > LEASE_S + 1

        poll(lease_expired, LEASE_S + 15, "the paused instance's lease to expire")
        api.submit_batch([ledger_task("probe", 10)])
        probe = api.wait_status("probe", "COMPLETED", timeout=PROBE_DEADLINE_S)
        assert worker_pid(probe["worker"]) == other.proc.pid, brief(probe)
        # Its open transaction did not keep the paused instance's attempt alive.
        long = api.wait_status("long", "FAILED", timeout=LEASE_S + 10)
        assert long["error_code"] == "interrupted" and long["attempts"] == 1, brief(long)
    finally:
        paused.signal(signal.SIGCONT)
    assert_keeps_working(pg, api, paused, other)


# -- f. queues: a limit held across processes, a pause that starts nothing -----------------

QUEUE_RUNNING_SQL = "SELECT queue, count(*) FROM tasks WHERE status = 'RUNNING' GROUP BY queue"


def run_queues(cluster: Cluster, api: Server) -> None:
    """A limit of 2 on `tight` across every scheduler process, `held` paused until the
    rest is done: sampled from the database, and checked against the ledger."""
    base = api.base_url
    assert requests.put(f"{base}/api/queues/tight", json={"concurrency_limit": 2}, timeout=10).ok
    assert requests.post(f"{base}/api/queues/held/pause", timeout=10).ok
    rng = random.Random(18)
    tight = [ledger_task(f"tight-{i}", rng.randint(10, 40), queue="tight") for i in range(40)]
    held = [ledger_task(f"held-{i}", 5, queue="held") for i in range(10)]
    loose = independent(rng, 150, 5, 20)
    api.submit_batch(tight + held + loose)
    peak: Counter[str] = Counter()

    def others_finished() -> bool:
        for queue, count in cluster.query(QUEUE_RUNNING_SQL):
            peak[queue] = max(peak[queue], count)
        left = cluster.query("SELECT count(*) FROM tasks WHERE status <> 'COMPLETED'")[0][0]
        return bool(left == len(held))

    poll(others_finished, 90, "every task outside the paused queue to complete", 0.01)
    assert peak["tight"] == 2, dict(peak)  # reached, never passed
    assert not {r.task_id for r in cluster.runs()} & {t["id"] for t in held}
    assert requests.post(f"{base}/api/queues/held/resume", timeout=10).ok
    cluster.wait_finished(timeout=30)
    runs = cluster.runs()
    assert max_running([r for r in runs if r.task_id.startswith("tight-")]) <= 2
    assert_exactly_once(runs, [t["id"] for t in tight + held + loose])


@pytest.mark.postgres
def test_a_queue_limit_holds_across_three_instances_and_a_pause_starts_nothing(
    pg: Cluster,
) -> None:
    pg.schedulers(3, MAX_CONCURRENT_TASKS="4")
    run_queues(pg, pg.api())


def test_on_sqlite_a_queue_limit_holds_across_processes_and_a_pause_starts_nothing(
    lite: Cluster,
) -> None:
    server = lite.launcher.gunicorn(lite.db, **lite.settings(MAX_CONCURRENT_TASKS="4"))
    lite.launcher.schedulers(lite.db, 2, **lite.settings(MAX_CONCURRENT_TASKS="4"))
    lite.wait_instances(3)
    run_queues(lite, server)
