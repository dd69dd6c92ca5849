"""The floor under a scheduler pass on SQLite: its statements alone, on the driver.

A pass writes the outcomes of the attempts that ended and claims as many tasks as slots
are free, in one durable commit. Here the same statements (from app.storage.scheduler_sql)
run on a bare sqlite3 connection with the service's settings (WAL, synchronous FULL),
with no Python around them but the loop, on a table the batch API filled: completing the
previous pass's tasks, counting down their dependents, promoting what fell due, claiming
16, committing. What it takes is the least a pass can cost on this machine's disk and CPU,
and so bounds what one scheduler can run at 16 slots: every slot waits for a pass to hand
it a task and for another to write its outcome.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import db as store
from bench.growth import open_app
from bench.noop_handlers import NOOP
from bench.server import BASE_SETTINGS, migrate

SLOTS = int(BASE_SETTINGS["MAX_CONCURRENT_TASKS"])
PASSES = 400
WORKER = "floor"
HANDLER_S = 0.001  # the tasks of the `work` figure


def pass_floor(workdir: Path, passes: int = PASSES) -> dict[str, Any]:
    """Time `passes` bare passes of SLOTS tasks; return the median and what it bounds."""
    from app.storage import scheduler_sql

    db = store.sqlite_database(workdir, "floor")
    migrate(db)
    _fill(db, SLOTS * (passes + 1))
    assert db.path is not None
    conn = sqlite3.connect(db.path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "temp_store=MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute(
            "INSERT INTO scheduler_instances (id, hostname, pid, started_at, heartbeat_at,"
            " heartbeat_monotonic, state) VALUES (?, 'floor', ?, ?, ?, 0, 'running')",
            (WORKER, os.getpid(), *[scheduler_sql.sqlite_time(datetime.now())] * 2),
        )
        times = []
        previous: list[tuple[str, int]] = []
        for _ in range(passes):
            began = time.perf_counter()
            previous = _one_pass(conn, previous)
            times.append(time.perf_counter() - began)
    finally:
        conn.close()
    pass_s = statistics.median(times)
    return {
        "slots": SLOTS,
        "passes": passes,
        "pass_ms": pass_s * 1e3,
        "noop_ceiling_tasks_per_s": SLOTS / pass_s,
        "work_ceiling_tasks_per_s": SLOTS / (HANDLER_S + pass_s),
    }


def _one_pass(conn: sqlite3.Connection, previous: list[tuple[str, int]]) -> list[tuple[str, int]]:
    from app.storage import scheduler_sql as sql

    now = sql.sqlite_time(datetime.now())
    conn.execute("BEGIN IMMEDIATE")
    if previous:
        params: dict[str, Any] = {"w": WORKER, "now": now}
        for k, (task_id, attempt) in enumerate(previous):
            params[f"i{k}"], params[f"a{k}"] = task_id, attempt
        done = conn.execute(sql.complete_sql("sqlite", len(previous)), params).fetchall()
        ended = {f"e{k}": task_id for k, (task_id, _) in enumerate(done)}
        conn.execute(sql.count_down_sql("sqlite", len(ended)), ended).fetchall()
    conn.execute(sql.promote_sql("sqlite"), {"now": now, "limit": 1000})
    claim = {"now": now, "limit": SLOTS, "w": WORKER}
    rows = conn.execute(sql.claim_sql("sqlite"), claim).fetchall()
    conn.execute("COMMIT")
    return [(row[1], row[5]) for row in rows]  # id, attempts


def _fill(db: Any, n: int) -> None:
    """Submit `n` no-op tasks through the batch API, as the e2e figures do."""
    app = open_app(db)
    client = app.test_client()
    for start in range(0, n, 1000):
        body = {
            "tasks": [
                {"id": f"floor-{i}", "type": NOOP, "duration_ms": 1}
                for i in range(start, min(start + 1000, n))
            ]
        }
        response = client.post("/api/tasks/batch", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"batch: {response.status_code} {response.get_data()[:200]!r}")
