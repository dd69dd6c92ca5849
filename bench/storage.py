"""Scaling with the table's size: claim cost and server memory with 10^3..10^6 tasks stored.

The stored tasks are written straight into the SQLite file (raw sqlite3, one transaction,
no dependency edges) as COMPLETED rows, followed by a few QUEUED ones. Then:
- the cost of a claim+finish cycle through the app's own `Store`, in this process, at the
  default durability (FULL: two fsyncs per cycle) and at NORMAL (no fsync: the query cost);
- a gunicorn server on that file: time to become healthy, the worker's RSS once it has run
  the remaining QUEUED tasks and answered a few reads, and how long those reads took.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import db as store
from bench.client import Client
from bench.progress import log
from bench.server import BASE_SETTINGS, Database, migrate, serving

WARMUP_CYCLES = 20
# Turns the sizes take at the claim measurement.
ROUNDS = 6
# QUEUED tasks left for the server to run before its memory is read.
SERVER_QUEUED = 200
COLUMNS = (
    "id, type, duration_ms, status, priority, trigger_rule, max_attempts, retry_backoff_ms, "
    "pending_deps, attempts, failures, created_at, updated_at, started_at, finished_at, worker, "
    "cancel_requested"
)
INSERT = f"INSERT INTO tasks ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(',')))})"


def _rows(completed: int, queued: int) -> Iterator[tuple[Any, ...]]:
    # Recent enough that retention (7 days by default) prunes none of them at start-up.
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    step = timedelta(seconds=3600 / max(completed, 1))
    for i in range(completed):
        at = (base + i * step).isoformat(" ")
        yield (f"old-{i:07d}", "noop", 1, "COMPLETED", 0, "all_success", 1, 1000, 0, 1, 0,
               at, at, at, at, "bench-past-worker", 0)  # fmt: skip
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
    for i in range(queued):
        yield (f"new-{i:07d}", "noop", 1, "QUEUED", 0, "all_success", 1, 1000, 0, 0, 0,
               now, now, None, None, None, 0)  # fmt: skip


def build(db: Database, completed: int, queued: int) -> float:
    """Create the schema, then insert the rows in one transaction; return the seconds."""
    assert db.path is not None
    migrate(db)
    began = time.perf_counter()
    conn = sqlite3.connect(db.path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # setting up, not measured
        conn.execute("BEGIN")
        conn.executemany(INSERT, _rows(completed, queued))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.perf_counter() - began


def claim_costs(dbs: dict[int, Database], cycles: int, sync: str) -> dict[int, dict[str, Any]]:
    """Time `cycles` claim(1)+finish cycles per database through the app's Store, in identity.

    The databases take turns, a few cycles at a time, so a noisy moment on the machine is
    shared by every size instead of spoiling one.
    """
    from app import create_app, events

    stores = {}
    for size, db in dbs.items():
        env = {**BASE_SETTINGS, "DATABASE_URL": db.url, "SQLITE_SYNCHRONOUS": sync}
        stores[size] = create_app({**env, "SCHEDULER_ENABLED": "false"}).extensions["store"]
        # The state-change lines are queued as in the service, then dropped, not printed.
        events.of(stores[size].engine).stream = open(os.devnull, "w")  # noqa: SIM115
    timings: dict[int, tuple[list[float], list[float]]] = {size: ([], []) for size in dbs}
    workers = {size: register_worker(store_) for size, store_ in stores.items()}
    try:
        for size, store_ in stores.items():
            _cycles(store_, workers[size], WARMUP_CYCLES, ([], []))
        for turn in range(ROUNDS):
            share = cycles // ROUNDS + (1 if turn < cycles % ROUNDS else 0)
            for size, store_ in stores.items():
                _cycles(store_, workers[size], share, timings[size])
    finally:
        for size, store_ in stores.items():
            store_.deregister(workers[size])
            store_.engine.dispose()
    return {size: _stats(*timings[size]) for size in dbs}


def _cycles(store_: Any, worker: str, n: int, into: tuple[list[float], list[float]]) -> None:
    from app.statuses import Status
    from app.storage.store import Outcome

    for _ in range(n):
        t0 = time.perf_counter()
        (claim,) = store_.claim(worker, 1)
        t1 = time.perf_counter()
        store_.finish(claim, Outcome(Status.COMPLETED))
        into[0].append(t1 - t0)
        into[1].append(time.perf_counter() - t1)


def _stats(claims: list[float], finishes: list[float]) -> dict[str, Any]:
    cycle = [a + b for a, b in zip(claims, finishes, strict=True)]
    return {
        "cycles": len(cycle),
        "cycle_us": statistics.fmean(cycle) * 1e6,
        "cycle_p50_us": statistics.median(cycle) * 1e6,
        "claim_us": statistics.fmean(claims) * 1e6,
        "finish_us": statistics.fmean(finishes) * 1e6,
    }


def register_worker(store_: Any) -> str:
    """Register this process as a scheduler instance of `store_`; return its id."""
    from app.runtime import identity

    worker = f"bench-{os.getpid()}"
    now = datetime.now(UTC).replace(tzinfo=None)
    store_.register(
        {
            "id": worker,
            "hostname": identity.host_key(),
            "pid": os.getpid(),
            "process_start": identity.start_time(os.getpid()),
            "started_at": now,
            "heartbeat_at": now,
            "state": "running",
        }
    )
    return worker


def server_footprint(db: Database, log_path: Path) -> dict[str, Any]:
    """Serve `db`; return start-up time, read latencies and the worker's RSS."""
    with serving(db, log_path) as server:
        startup_s = server.start_seconds
        store.wait_finished(db, 300)
        client = Client(server.base)
        reads = {
            "list_ms": client.timed_get("/api/tasks"),
            "list_queued_ms": client.timed_get("/api/tasks?status=QUEUED"),
            "get_ms": client.timed_get("/api/tasks/old-0000000"),
            "health_ms": client.timed_get("/health"),
        }
        client.close()
        return {"startup_s": startup_s, "rss_mib": server.worker_rss() / 2**20, **reads}


def scaling(workdir: Path, sizes: list[int], cycles: int) -> list[dict[str, Any]]:
    """Build one database per size; measure claim costs (interleaved), then each server."""
    dbs = {size: store.sqlite_database(workdir, f"scale-{size}") for size in sorted(sizes)}
    results: dict[int, dict[str, Any]] = {}
    try:
        for size, db in dbs.items():
            queued = 2 * (WARMUP_CYCLES + cycles) + SERVER_QUEUED
            results[size] = {"stored": size, "build_s": build(db, size, queued)}
            log(f"storage: built {size:,} stored tasks in {results[size]['build_s']:.1f} s")
        for size, figures in claim_costs(dbs, cycles, "FULL").items():
            results[size].update(figures)
        for size, figures in claim_costs(dbs, cycles, "NORMAL").items():
            results[size].update({f"normal_{k}": v for k, v in figures.items()})
        for size, db in dbs.items():
            results[size].update(server_footprint(db, workdir / f"scale-{size}.log"))
            assert db.path is not None
            results[size]["file_mib"] = db.path.stat().st_size / 2**20
            log(f"storage {size:,}: {brief(results[size])}")
    finally:
        for db in dbs.values():
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db.path}{suffix}").unlink(missing_ok=True)
    return list(results.values())


def brief(result: dict[str, Any]) -> str:
    """Return one size's figures in a line."""
    return (
        f"cycle {result['cycle_us']:,.0f} us (NORMAL {result['normal_cycle_us']:,.0f} us), "
        f"rss {result['rss_mib']:.1f} MiB, start-up {result['startup_s']:.2f} s"
    )
